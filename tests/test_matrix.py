"""Every scoring method x every backbone x both kv modes x SDPA / eager, against the slow full-length reference.

Each method's scores are computed here plainly, without dashvl's scoring code (``SCORES``, one line a method):

- dash: Δ = ||U||₂ of the activation layer's attention output, from a forward hook on the unmodified model;
- random: the seeded uniform draw, ``torch.rand([B, T])`` from a generator seeded with the config's seed;
- fastv: the attention row of each row's last real token at l_s, averaged over heads, read from the eager twin's
  ``output_attentions`` (the tiny models are seeded: the eager twin has the same weights).

Scope: each method's default (FastV's is "vision"). Text-only backbones have no visual tokens, so there a method
whose default is "vision" runs with scope="all": otherwise nothing would halt and the case would prove nothing.

The reference then halts the lowest-scored eligible tokens (``reference_halted``) and runs full-length forwards
with them masked (``Reference``); dashvl must halt the same set and give the same greedy tokens and logits.
A new method is one line in ``SCORES``; ``test_every_method_is_in_the_matrix`` fails until it is there.
"""
import pytest
import torch

import dashvl
from dashvl import methods
from tests.helpers import (Reference, assert_same_generation, build, dash_avg_reference, layers_of, make_inputs,
                           rank_fractions, record_updates, reference_halted, visual_kinds)

BACKBONES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "llava", "llava_next", "llava_onevision", "internvl", "gemma3", "llava-mistral", "llava-qwen2", "llama", "qwen2",
             "mistral", "mistral-window", "gemma3_text")
TEXT_ONLY = ("llama", "qwen2", "mistral", "mistral-window", "gemma3_text")
LAYER, RATIO, SEED, STEPS = 1, 0.5, 7, 3
ATOL = 2e-4  # float32; gathered vs masked attention differ only in summation order


def _delta(model, family, inputs):
    return Reference(model, LAYER, "drop").scores(inputs)


def _uniform(model, family, inputs):
    B, T = inputs["input_ids"].shape
    return torch.rand((B, T), generator=torch.Generator().manual_seed(SEED))


_ATTENTION_ROWS: dict = {}


@torch.no_grad()
def _last_token_attention(model, family, inputs):
    """float32 [B, T]: softmax attention of each row's last real token at l_s, mean over heads (eager twin)."""
    if family not in _ATTENTION_ROWS:
        eager, _ = build(family, "eager")
        weights = eager(**inputs, output_attentions=True, use_cache=False).attentions[LAYER]  # [B, H, T, T]
        real = inputs["attention_mask"].bool()
        positions = torch.arange(real.shape[1])
        last = torch.where(real, positions, -1).max(1).values
        rows = weights[torch.arange(real.shape[0]), :, last]                                 # [B, H, T]
        _ATTENTION_ROWS[family] = rows.float().mean(1)
    return _ATTENTION_ROWS[family]


KEEP = torch.finfo(torch.float32).max  # "stays if at all possible"


def _sinks_kept(scores, real, sinks=4):
    return scores.masked_fill(real & (torch.cumsum(real.long(), 1) <= sinks), KEEP)


@torch.no_grad()
def _window_attention(model, family, inputs, window=32, kernel=7, values=False, heads="mean"):
    """SnapKV from the eager twin's weights: the last ``window`` positions' rows (real ones only) summed, mean
    over heads, average-pooled over ``kernel`` neighbours; the window itself kept. ``values``: each weight times
    the norm of the key's value in that head (dash-q), the values recorded from the twin's v_proj."""
    eager, _ = build(family, "eager")
    attn = layers_of(eager)[LAYER].self_attn
    recorded = []
    hook = attn.v_proj.register_forward_hook(lambda m, a, o: recorded.append(o))
    try:
        weights = eager(**inputs, output_attentions=True, use_cache=False).attentions[LAYER].float()  # [B, H, T, T]
    finally:
        hook.remove()
    if values:
        B, T = weights.shape[0], weights.shape[-1]
        norms = recorded[0].view(B, T, -1, attn.head_dim).float().norm(dim=-1).transpose(1, 2)  # [B, KV, T]
        weights = weights * norms.repeat_interleave(weights.shape[1] // norms.shape[1], dim=1)[:, :, None, :]
    real = inputs["attention_mask"].bool()
    B, T = real.shape
    w = min(window, T)
    out = torch.zeros(B, T)
    for b in range(B):
        rows = [p for p in range(T - w, T) if real[b, p]]  # left padding: the last real token is at T - 1
        votes = weights[b][:, rows, :].sum(1)  # [H, T]
        # heads="max": each head's votes as a share of its total, the largest share (dash-q-heads)
        votes = (votes / votes.sum(-1, keepdim=True)).max(0).values if heads == "max" else votes.mean(0)
        out[b] = torch.nn.functional.avg_pool1d(votes[None, None], kernel, 1, kernel // 2, count_include_pad=False)[0, 0]
        out[b, T - w:] = KEEP
    return out


def _recency(model, family, inputs):
    real = inputs["attention_mask"].bool()
    return _sinks_kept((torch.cumsum(real.long(), 1) - 1).float(), real)


def _delta_sinks_kept(model, family, inputs):
    return _sinks_kept(_delta(model, family, inputs), inputs["attention_mask"].bool())


def _delta_averaged(model, family, inputs):
    return dash_avg_reference(record_updates(model, inputs), inputs["attention_mask"].bool(), LAYER)


def _averaged_and_window(model, family, inputs):
    real = inputs["attention_mask"].bool()
    avg, snap = _delta_averaged(model, family, inputs), _window_attention(model, family, inputs)
    mixed = 0.5 * (rank_fractions(avg, real) + rank_fractions(snap, real))
    return mixed.masked_fill((avg == KEEP) | (snap == KEEP), KEEP)


@torch.no_grad()
def _layer_inputs(model, inputs):
    """The residual stream entering decoder layers LAYER - 1 and LAYER in the prompt's call of an unmodified
    greedy generate() (pre-hooks; the same call path as dashvl's below, so that a greedy diversity order, which
    float rounding near a tie can flip, sees the same numbers)."""
    got = {}
    layers = layers_of(model)
    def keep(i):
        def hook(module, args, kwargs):
            got.setdefault(i, (args[0] if args else kwargs["hidden_states"]).float())
        return hook

    hooks = [layers[i].register_forward_pre_hook(keep(i), with_kwargs=True) for i in (LAYER - 1, LAYER)]
    try:
        model.generate(**inputs, max_new_tokens=1, do_sample=False)
    finally:
        for h in hooks:
            h.remove()
    return got[LAYER - 1], got[LAYER]


def _greedy_diversity(model, family, inputs):
    """DivPrune's greedy max-min selection, a loop per row over the eligible tokens of the residual stream entering
    l_s (cosine distance): score = how many eligible tokens are picked after it; other tokens KEEP."""
    x = torch.nn.functional.normalize(_layer_inputs(model, inputs)[1], dim=-1)
    dist = 1.0 - x @ x.transpose(1, 2)
    real = inputs["attention_mask"].bool()
    kinds = visual_kinds(model, inputs["input_ids"])
    scope = _scope("divprune", family)
    out = torch.full(real.shape, KEEP)
    for b in range(real.shape[0]):
        pos = [t for t in range(real.shape[1]) if real[b, t]]
        cand = [t for t in pos[:-1] if scope == "all" or (scope == "vision") == bool(kinds[b, t])]
        picked = []
        while len(picked) < len(cand):
            def reach(t):
                others = [u for u in cand if u != t] if not picked else picked
                return min((float(dist[b, t, u]) for u in others), default=2.0)
            best = max((t for t in cand if t not in picked), key=lambda t: (reach(t), -t))
            picked.append(best)
        for rank, t in enumerate(picked):
            out[b, t] = len(cand) - rank
    return out


def _block_variation(model, family, inputs):
    below, at = _layer_inputs(model, inputs)
    return (at - below).norm(dim=-1)


SCORES = {
    "dash": _delta,
    "random": _uniform,
    "fastv": _last_token_attention,
    "snapkv": _window_attention,
    "streamingllm": _recency,
    "dash-avg": _delta_averaged,
    "dash-snap": _averaged_and_window,
    "dash-sinks": _delta_sinks_kept,
    "dash-q": lambda model, family, inputs: _window_attention(model, family, inputs, values=True),
    "dash-q-heads": lambda model, family, inputs: _window_attention(model, family, inputs, values=True, heads="max"),
    "divprune": _greedy_diversity,
    "v2drop": _block_variation,
}


def test_every_method_is_in_the_matrix():
    assert set(SCORES) == set(methods.names("llm"))


def _scope(method, family):
    scope = dashvl.DashConfig(method=method).scope
    return "all" if family in TEXT_ONLY and scope == "vision" else scope


@pytest.mark.parametrize("method", list(SCORES))
@pytest.mark.parametrize("family", BACKBONES)
@pytest.mark.parametrize("kv", ["drop", "keep"])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_method_matches_reference(method, family, kv, attn):
    model, _ = build(family, attn)
    inputs = make_inputs(family, 3)
    real = inputs["attention_mask"].bool()
    assert not real.all()  # the batch really is padded
    scope = _scope(method, family)
    scores = SCORES[method](model, family, inputs)
    halted = reference_halted(scores, real, visual_kinds(model, inputs["input_ids"]), RATIO, scope)
    assert halted.any()
    tokens, logits = Reference(model, LAYER, kv).greedy(inputs, halted, steps=STEPS)

    with dashvl.compress(model, method=method, ratio=RATIO, layer=LAYER, kv=kv, scope=scope, seed=SEED) as h, \
            torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=STEPS, do_sample=False, output_logits=True,
                             return_dict_in_generate=True)
        trace = h.trace
    assert trace.method == method and trace.scope == scope
    torch.testing.assert_close(trace.scores[real], scores[real].float(), atol=1e-5, rtol=1e-4)
    assert torch.equal(trace.halted, halted)
    assert torch.equal(trace.active, real & ~halted)
    assert_same_generation(out, inputs, tokens, logits, ATOL)
