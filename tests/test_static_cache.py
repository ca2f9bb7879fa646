"""generate(..., cache_implementation="static") on a compressed model (issue 21): the halted prefill is stored
into the static cache by position, so decode steps are transformers' own (compiled where it compiles them);
kv="drop" leaves the halted slots out of the halted layers' masks (``engine.static_cache``)."""
import weakref

import pytest
import torch
from transformers import CompileConfig

import dashvl
from bench.decode_ops import decode_step_counts, host_reads
from dashvl.engine import static_cache
from dashvl.tiny import tiny_decoder
from tests.helpers import NEW_TOKENS, assert_same_generation, build, dash_reference, generate, make_inputs

STATIC = dict(cache_implementation="static")


def _reference(model, inputs, kv, ratio=0.5, layer=1):
    return dash_reference(model, inputs, layer, kv, ratio)[1:]


@pytest.mark.parametrize("family,attn,batch", [("qwen2_vl", "sdpa", 3), ("llava", "sdpa", 3), ("llama", "sdpa", 3),
                                               ("llama", "eager", 3), ("qwen2_vl", "eager", 1), ("qwen3_vl", "sdpa", 3),
                                               ("llava_next", "sdpa", 3), ("llava_onevision", "sdpa", 3),
                                               ("internvl", "sdpa", 3)])
@pytest.mark.parametrize("kv", ["drop", "keep"])
def test_static_cache_generation_equals_the_slow_reference(family, attn, batch, kv):
    model, _ = build(family, attn)
    inputs = make_inputs(family, batch)
    tokens, logits = _reference(model, inputs, kv)
    with dashvl.compress(model, method="dash", ratio=0.5, layer=1, kv=kv) as handle:
        out = generate(model, inputs, **STATIC)
        assert handle.trace.halted.any()
    assert_same_generation(out, inputs, tokens, logits)


@pytest.mark.parametrize("family", ["qwen2_vl", "llava", "llama"])
def test_ratio_zero_on_a_static_cache_is_bitwise_unmodified(family):
    model, _ = build(family)
    inputs = make_inputs(family, 3)
    want = generate(model, inputs, **STATIC)
    with dashvl.compress(model, method="dash", ratio=0, layer=1):
        got = generate(model, inputs, **STATIC)
    assert torch.equal(got.sequences, want.sequences)
    assert all(torch.equal(a, b) for a, b in zip(got.logits, want.logits))


def _no_counter(mask, holes, written, queries):  # every compact slot, the ones no step wrote yet included
    return holes[:, None, None, :].expand(-1, 1, queries, -1)


def _no_holes(mask, holes, written, queries, compact_mask=static_cache.compact_mask):
    return compact_mask(mask, torch.ones_like(holes), written, queries)  # the fillers of padded rows included


@pytest.mark.parametrize("wrong,batch", [(_no_counter, 1), (_no_holes, 3)])
def test_drop_needs_its_compact_mask(monkeypatch, wrong, batch):
    """The equality above depends on both halves of ``compact_mask``: without the counter a decode step attends
    to slots no step wrote yet; without the holes, a padded row to its filler slots."""
    model, _ = build("llama")
    inputs = make_inputs("llama", batch)
    tokens, logits = _reference(model, inputs, "drop")
    monkeypatch.setattr(static_cache, "compact_mask", wrong)
    with dashvl.compress(model, method="dash", ratio=0.5, layer=1, kv="drop") as handle:
        out = generate(model, inputs, **STATIC)
        if batch > 1:
            assert not static_cache.holes_of(out.past_key_values).all()  # a padded row has filler slots
    with pytest.raises(AssertionError):
        assert_same_generation(out, inputs, tokens, logits)


@pytest.mark.parametrize("family", ["llama", "qwen2_vl"])
def test_drop_makes_the_halted_static_layers_compact(monkeypatch, family):
    """kv="drop": the halted layers' static buffers hold the active slots and the new tokens only (their
    memory, and what each decode step reads, shrinks by the halted share); the layers below keep full width."""
    monkeypatch.setattr(static_cache, "_WIDTHS", weakref.WeakKeyDictionary())  # no width from an earlier test
    model, _ = build(family)
    inputs = make_inputs(family, 3)
    T = inputs["input_ids"].shape[1]
    with dashvl.compress(model, method="dash", ratio=0.5, layer=1, kv="drop") as handle:
        out = generate(model, inputs, **STATIC)
        active = int(handle.trace.active.sum(1).max())  # the prompt's compact slots: the fullest row's
    cache = out.past_key_values
    full = static_cache.max_length(cache)  # T + the new tokens (or an earlier generate()'s longer one)
    assert [layer.keys.shape[2] for layer in cache.layers[:2]] == [full] * 2
    rung = -(-full // 32)  # the width grows in 1/32 steps of the stock one (fewer recompilations)
    assert {layer.keys.shape[2] for layer in cache.layers[2:]} == {-(-(active + full - T) // rung) * rung}
    assert cache.layers[2].keys.shape[2] < full
    assert active <= T - int(0.5 * T) + 3  # about half of each row halted (rows differ by padding)
    assert {int(layer.cumulative_length) for layer in cache.layers[2:]} == {active + NEW_TOKENS - 1}


def _shorter(inputs, by: int):
    return {k: v[:, by:] for k, v in inputs.items()}  # text inputs of a left-padded batch: the first tokens go


def test_the_compact_width_grows_to_the_widest_need_and_stays(monkeypatch):
    """Prompts on one stock width take the widest compact width made before (transformers keeps one stock
    width for all requests up to the longest so far): a prompt that halts fewer tokens widens it, later ones
    reuse it, and the answers stay the reference's."""
    monkeypatch.setattr(static_cache, "_WIDTHS", weakref.WeakKeyDictionary())
    model, _ = build("llama")
    long = make_inputs("llama", 3)
    short = _shorter(long, 4)
    tokens, logits = _reference(model, short, "drop")
    width = lambda out: out.past_key_values.layers[2].keys.shape[2]  # noqa: E731
    full = lambda out: static_cache.max_length(out.past_key_values)  # noqa: E731
    with dashvl.compress(model, method="dash", ratio=0.5, layer=1, kv="drop"):
        first = generate(model, long, **STATIC)
        wider = generate(model, short, **STATIC)  # fewer halted tokens, same stock width: needs more slots
        again = generate(model, long, **STATIC)
        out = generate(model, short, **STATIC)
    assert full(first) == full(wider) == full(again) == full(out)
    assert width(first) < width(wider) == width(again) == width(out) < full(first)
    assert_same_generation(out, short, tokens, logits)


def test_prompts_within_the_compact_width_reuse_the_compiled_decode_step(monkeypatch):
    import torch._dynamo.utils as dynamo_utils
    monkeypatch.setattr(static_cache, "_WIDTHS", weakref.WeakKeyDictionary())
    model, _ = build("llama")
    long = make_inputs("llama", 3)
    config = _compile_config()
    counts = []
    with dashvl.compress(model, method="dash", ratio=0.5, layer=1, kv="drop"):
        for inputs in (long, _shorter(long, 4), long, _shorter(long, 2), _shorter(long, 4)):
            eager = generate(model, inputs, **STATIC)
            compiled = generate(model, inputs, **STATIC, compile_config=config)
            counts.append(dynamo_utils.counters["stats"]["unique_graphs"])
            assert torch.equal(compiled.sequences, eager.sequences)
    assert counts[1] == counts[2] == counts[3] == counts[4], counts  # compiled for the widest need, then reused


@pytest.mark.parametrize("kv", ["drop", "keep"])
def test_beam_search_on_a_static_cache_equals_the_dynamic_cache(kv):
    """method="random" halts different tokens in each beam of one prompt, so the holes must follow the beams'
    reordering (the static cache's reorder_cache reorders them too)."""
    model, _ = build("llama")
    inputs = make_inputs("llama", 2)
    kw = dict(max_new_tokens=6, num_beams=3, num_return_sequences=3, do_sample=False, length_penalty=0.0,
              return_dict_in_generate=True, output_scores=True)
    with dashvl.compress(model, method="random", ratio=0.5, layer=1, kv=kv), torch.no_grad():
        dynamic = model.generate(**inputs, **kw)
        static = model.generate(**inputs, **kw, **STATIC)
    assert torch.equal(static.sequences, dynamic.sequences)
    torch.testing.assert_close(static.sequences_scores, dynamic.sequences_scores, atol=1e-4, rtol=0)


def _compile_config():
    config = CompileConfig(fullgraph=True)  # dashvl's hooks trace without a graph break
    config._compile_all_devices = True  # transformers compiles the static decode step on the CPU too
    return config


@pytest.mark.parametrize("kv", ["drop", "keep"])
def test_the_compiled_decode_step_equals_the_eager_one_before_and_after_compress(kv):
    """generate() compiles the decode step of a static cache. torch.compile does not guard on hooks, so the
    step compiled for the unmodified model must not be replayed for a kv="drop" one (it would leave the holes
    in), nor the compressed one after restore."""
    model, _ = build("llama")
    inputs = make_inputs("llama", 3)
    config = _compile_config()
    unmodified = generate(model, inputs, **STATIC)
    assert torch.equal(generate(model, inputs, **STATIC, compile_config=config).sequences, unmodified.sequences)
    for _ in range(2):  # a second handle with the same setting reuses the first one's compiled step
        with dashvl.compress(model, method="random", ratio=0.5, layer=1, kv=kv):
            eager = generate(model, inputs, **STATIC)
            compiled = generate(model, inputs, **STATIC, compile_config=config)
            assert isinstance(model.get_compiled_call, static_cache.CompiledDecode) == (kv == "drop")
        assert torch.equal(compiled.sequences, eager.sequences)
        for a, b in zip(compiled.logits, eager.logits):
            torch.testing.assert_close(a, b, atol=1e-4, rtol=0)
    again = generate(model, inputs, **STATIC, compile_config=config)
    assert torch.equal(again.sequences, unmodified.sequences)
    assert "get_compiled_call" not in model.__dict__


@pytest.mark.parametrize("kv,extra", [("keep", 0), ("drop", 5)])
def test_a_static_decode_step_adds_at_most_the_compact_mask(kv, extra):
    """kv="keep": not one op more than the unmodified static step; kv="drop": the five ops of the compact mask
    (the slots' arange, against the counter, with the holes, two unsqueezes), made once for every halted
    layer; no host read either way."""
    model, _ = build("llama")
    inputs = make_inputs("llama", 3)
    base, got = decode_step_counts(model, inputs, [None, dict(ratio=0.5, layer=1, kv=kv)], **STATIC)
    ops = lambda c: sum(c.values()) - c["tolist"]  # noqa: E731
    assert ops(got) - ops(base) == extra, got - base
    assert host_reads(got) <= host_reads(base)


def test_hole_masks_stay_from_the_first_static_prompt_until_restore():
    model, _ = build("llama")
    layers = model.model.layers
    hooks = lambda: sum(len(m._forward_pre_hooks) for m in layers)  # noqa: E731
    before = hooks()
    with dashvl.compress(model, method="dash", ratio=0.5, layer=1, kv="drop"):
        generate(model, make_inputs("llama", 1))
        assert hooks() == before  # dynamic caches only: no hook on a decoder layer
        generate(model, make_inputs("llama", 1), **STATIC)
        assert hooks() == before + len(layers) - 2  # one on each halted layer
        generate(model, make_inputs("llama", 1))
        assert hooks() == before + len(layers) - 2
    assert hooks() == before
    with dashvl.compress(model, method="dash", ratio=0.5, layer=1, kv="keep"):
        generate(model, make_inputs("llama", 1), **STATIC)
        assert hooks() == before  # kv="keep" decodes the stock way


def test_a_new_handle_reuses_the_compiled_decode_step(monkeypatch):
    """Handles of one setting share the kv="drop" compiled step: no recompilation per compress."""
    import torch._dynamo.utils as dynamo_utils
    model, _ = build("llama")
    inputs = make_inputs("llama", 3)
    config = _compile_config()
    counts = []
    for _ in range(3):
        with dashvl.compress(model, method="dash", ratio=0.5, layer=1, kv="drop"):
            generate(model, inputs, **STATIC, compile_config=config)
        counts.append(dynamo_utils.counters["stats"]["unique_graphs"])
    assert counts[1] == counts[2] == counts[0], counts


def test_a_later_prompt_on_a_static_cache_is_refused():
    model, _ = build("llama")
    inputs = make_inputs("llama", 1)
    with dashvl.compress(model, method="dash", ratio=0.5, layer=1), torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=2, return_dict_in_generate=True, **STATIC)
        seq = out.sequences
        with pytest.raises(ValueError, match=r"a prompt on a StaticCache that already holds tokens is not "
                                             r"supported .* use the dynamic cache"):
            model(input_ids=seq, attention_mask=torch.ones_like(seq), cache=out.past_key_values)


def test_sliding_static_layers_and_flash_are_refused():
    model, tok = tiny_decoder("mistral")
    model.config.sliding_window = 8
    model.generation_config.eos_token_id = None
    with dashvl.compress(model, method="dash", ratio=0.5, layer=1), torch.no_grad():
        with pytest.raises(ValueError, match=r"StaticSlidingWindowLayer layers .* not supported"):
            model.generate(**tok(["a b c"], return_tensors="pt"), max_new_tokens=2, **STATIC)
    llama, _ = build("llama")
    with torch.no_grad():
        out = llama.generate(**make_inputs("llama", 1), max_new_tokens=1, return_dict_in_generate=True, **STATIC)
    static_cache.check_static(out.past_key_values, 2, "sdpa")
    with pytest.raises(ValueError, match=r"static cache with attn_implementation='flash_attention_2' is not"):
        static_cache.check_static(out.past_key_values, 2, "flash_attention_2")
