"""ratio > 0 equals the slow full-length reference: same halted tokens, logits, greedy tokens."""
import pytest
import torch

import dashvl
from tests.helpers import (BACKBONES, assert_same_generation, build, dash_reference, generate, layers_of, make_inputs,
                           Reference, reference_halted, visual_kinds)

ATOL = 2e-4  # float32; gathered vs masked attention differ only in summation order


def _check_against_reference(family, attn, batch, kv, ratio=0.5, layer=1, scope="all", images=1, protect_last=1):
    model, _ = build(family, attn)
    inputs = make_inputs(family, batch, images)
    real = inputs["attention_mask"].bool()
    halted, ref_tokens, ref_logits = dash_reference(model, inputs, layer, kv, ratio, scope=scope,
                                                    protect_last=protect_last)
    assert halted.any()

    with dashvl.compress(model, method="dash", ratio=ratio, layer=layer, kv=kv, scope=scope, protect_last=protect_last) as h:
        out = generate(model, inputs)
        trace = h.trace
    assert torch.equal(trace.halted, halted)
    assert torch.equal(trace.active, real & ~halted)
    assert_same_generation(out, inputs, ref_tokens, ref_logits, ATOL)


@pytest.mark.parametrize("family", BACKBONES)
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("kv", ["drop", "keep"])
def test_matches_reference(family, attn, batch, kv):
    _check_against_reference(family, attn, batch, kv)


@pytest.mark.parametrize("family", ["qwen2_vl", "llava"])
@pytest.mark.parametrize("scope", ["vision", "text"])
def test_scopes_match_reference(family, scope):
    _check_against_reference(family, "sdpa", 3, "drop", ratio=0.75, scope=scope, images=2)


def test_protect_last_several_tokens():
    _check_against_reference("qwen2_vl", "sdpa", 3, "drop", ratio=0.9, protect_last=6)


@pytest.mark.parametrize("layer", [0, 2])
def test_other_layers_and_high_ratio(layer):
    _check_against_reference("qwen2_vl", "sdpa", 3, "keep", ratio=0.9, layer=layer)


@pytest.mark.parametrize("family", ["llava-mistral", "llava-qwen2", "qwen2", "mistral"])
@pytest.mark.parametrize("kv", ["drop", "keep"])
def test_other_text_backbones_match_reference(family, kv):
    _check_against_reference(family, "sdpa", 3, kv)


def test_qwen2_5_vl_matches_reference():
    _check_against_reference("qwen2_5_vl", "sdpa", 3, "drop", images=2)
    _check_against_reference("qwen2_5_vl", "eager", 1, "keep")


def test_plain_forward_without_cache_matches_reference():
    for kv in ("drop", "keep"):
        model, _ = build("qwen2_vl")
        inputs = make_inputs("qwen2_vl", 3)
        ref = Reference(model, 1, kv)
        real = inputs["attention_mask"].bool()
        halted = reference_halted(ref.scores(inputs), real, visual_kinds(model, inputs["input_ids"]), 0.5)
        want = ref.logits(inputs, halted)
        with dashvl.compress(model, method="dash", ratio=0.5, layer=1, kv=kv), torch.no_grad():
            got = model(**inputs, use_cache=False).logits
        torch.testing.assert_close(got[real], want[real], atol=ATOL, rtol=0)


@pytest.mark.parametrize("family", BACKBONES)
def test_halted_layers_process_only_active_tokens(family):
    """Counted at the query projections, not in the engine's bookkeeping."""
    model, _ = build(family)
    inputs = make_inputs(family, 1)
    T = inputs["input_ids"].shape[1]
    seen = {}

    def counter(i):
        def hook(module, args, output):
            seen[i] = args[0].shape[-2]
        return hook

    hooks = [layer.self_attn.q_proj.register_forward_hook(counter(i)) for i, layer in enumerate(layers_of(model))]
    try:
        with dashvl.compress(model, method="dash", ratio=0.75, layer=1) as h, torch.no_grad():
            model(**inputs)
    finally:
        for hook in hooks:
            hook.remove()
    n_halt = int(0.75 * (T - 1))
    assert [seen[i] for i in range(len(seen))] == [T, T] + [T - n_halt] * (len(seen) - 2)
    assert h.trace.tokens_per_layer.tolist() == [[T, T] + [T - n_halt] * (len(seen) - 2)]
    # the halted ones are exactly the lowest-Δ eligible tokens
    order = torch.sort(h.trace.scores[0, :-1], stable=True).indices
    assert torch.equal(torch.where(h.trace.halted[0])[0], order[:n_halt].sort().values)


def test_batch_rows_use_max_active_slots():
    model, _ = build("qwen2_vl")
    inputs = make_inputs("qwen2_vl", 3)
    seen = []

    def shape(module, args, output):
        seen.append(tuple(args[0].shape[:2]))

    hook = layers_of(model)[3].self_attn.q_proj.register_forward_hook(shape)
    try:
        with dashvl.compress(model, method="dash", ratio=0.5, layer=1) as h, torch.no_grad():
            model(**inputs)
    finally:
        hook.remove()
    active = h.trace.active.sum(1)
    assert seen == [(3, int(active.max()))]
    assert len(set(active.tolist())) > 1  # rows really differ


def test_language_model_called_directly_halts_too():
    """Calling the decoder stack itself (as some pipelines do) gets the same halting as the whole model."""
    model, _ = build("llama")
    inputs = make_inputs("llama", 3)
    with dashvl.compress(model, method="dash", ratio=0.5, layer=1) as h, torch.no_grad():
        logits = model(**inputs).logits
        whole = h.trace
        hidden = model.model(**inputs).last_hidden_state
        direct = h.trace
    assert direct is not whole and torch.equal(direct.halted, whole.halted) and direct.halted.any()
    real = inputs["attention_mask"].bool()
    torch.testing.assert_close(model.lm_head(hidden)[real], logits[real], atol=1e-5, rtol=0)


def test_a_row_without_images_under_scope_vision():
    """One row halts 75% of its image tokens, the other has none to halt: it runs whole above l_s."""
    from dashvl.tiny import sample_image
    model, proc = build("qwen2_vl")
    with_image = proc.apply_chat_template([{"role": "user", "content": [
        {"type": "image"}, {"type": "text", "text": "what colour is it?"}]}], add_generation_prompt=True)
    text_only = proc.apply_chat_template([{"role": "user", "content": [
        {"type": "text", "text": "how many shapes are there in this picture on the left?"}]}], add_generation_prompt=True)
    inputs = dict(proc(text=[with_image, text_only], images=[sample_image()], return_tensors="pt", padding=True))
    ref = Reference(model, 1, "drop")
    real = inputs["attention_mask"].bool()
    halted = reference_halted(ref.scores(inputs), real, visual_kinds(model, inputs["input_ids"]), 0.75, "vision")
    assert halted[0].any() and not halted[1].any()
    tokens, logits = ref.greedy(inputs, halted)
    with dashvl.compress(model, method="dash", ratio=0.75, layer=1, scope="vision") as h:
        out = generate(model, inputs)
    assert torch.equal(h.trace.halted, halted)
    assert_same_generation(out, inputs, tokens, logits, ATOL)


@pytest.mark.parametrize("kv", ["drop", "keep"])
def test_right_padding_in_a_plain_forward(kv):
    """The last *real* token of each row is protected and padding never becomes a key, wherever it sits."""
    model, tok = build("llama")
    texts = ["what colour is the square", "how many shapes are there in this picture on the left of the big tree"]
    tok.padding_side = "right"
    try:
        inputs = dict(tok(texts, return_tensors="pt", padding=True))
    finally:
        tok.padding_side = "left"
    real = inputs["attention_mask"].bool()
    assert not real[0, -1]  # row 0 really is right-padded
    ref = Reference(model, 1, kv)
    halted = reference_halted(ref.scores(inputs), real, visual_kinds(model, inputs["input_ids"]), 0.5)
    want = ref.logits(inputs, halted)
    with dashvl.compress(model, method="dash", ratio=0.5, layer=1, kv=kv) as h, torch.no_grad():
        got = model(**inputs).logits
    assert torch.equal(h.trace.halted, halted)
    torch.testing.assert_close(got[real], want[real], atol=ATOL, rtol=0)
