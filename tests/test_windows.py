"""Sliding-window layers in the halted region (Mistral-style windows; Gemma 3's local layers with their own
rotary embedding between global ones), exact beyond the window: a layer's window applies to the tokens'
original positions, and the halted sliding layers keep their whole cache. The tiny models' window is 8 tokens
and the test prompts are 18-35 tokens long, so every prompt and every decode step runs past it. The method x
kv x backend matrix (tests/test_matrix.py) and beam search / second turns (tests/test_generation.py) hold both
families to the slow reference too."""
import pytest
import torch
from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

import dashvl
from tests.helpers import assert_same_generation, build, dash_reference, extend, generate, layers_of, make_inputs

WINDOWED = ("gemma3_text", "mistral-window")


@pytest.mark.parametrize("family", WINDOWED)
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("batch", [1, 3])
def test_ratio_zero_and_restore_are_bitwise_unmodified(family, attn, batch):
    model, _ = build(family, attn)
    inputs = make_inputs(family, batch)
    assert inputs["input_ids"].shape[1] > model.config.sliding_window
    want = generate(model, inputs)
    with dashvl.compress(model, method="dash", ratio=0, layer=1):
        zero = generate(model, inputs)
    with dashvl.compress(model, method="dash", ratio=0.5, layer=1):
        generate(model, inputs)
    again = generate(model, inputs)
    for got in (zero, again):
        assert torch.equal(got.sequences, want.sequences)
        assert all(torch.equal(a, b) for a, b in zip(got.logits, want.logits))


@pytest.mark.parametrize("family", WINDOWED)
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("kv", ["drop", "keep"])
@pytest.mark.parametrize("layer", [1, 2])
def test_beyond_the_window_equals_the_slow_reference(family, attn, batch, kv, layer):
    """Eight decode steps after prompts longer than the window; layer 1 and 2 start the halted region at a
    global and at a sliding layer of the Gemma 3 model."""
    model, _ = build(family, attn)
    inputs = make_inputs(family, batch)
    halted, tokens, logits = dash_reference(model, inputs, layer, kv, 0.5)
    with dashvl.compress(model, method="dash", ratio=0.5, layer=layer, kv=kv) as handle:
        out = generate(model, inputs)
        assert torch.equal(handle.trace.halted, halted)
    assert_same_generation(out, inputs, tokens, logits)


def test_halted_sliding_layers_keep_their_whole_cache():
    model, _ = build("gemma3_text")
    inputs = make_inputs("gemma3_text", 1)
    types = model.config.layer_types
    with dashvl.compress(model, method="dash", ratio=0.5, layer=1), torch.no_grad():
        cache = model.generate(**inputs, max_new_tokens=3, return_dict_in_generate=True).past_key_values
    below, above = cache.layers[:2], cache.layers[2:]
    assert [type(c) for c in below] == [DynamicSlidingWindowLayer if t == "sliding_attention" else DynamicLayer
                                        for t in types[:2]]
    assert all(type(c) is DynamicLayer for c in above)
    T = inputs["input_ids"].shape[1]
    held = T - int(0.5 * (T - 1)) + 2  # the active prompt tokens + the 2 decoded keys the cache holds
    assert below[0].keys.shape[-2] == model.config.sliding_window - 1  # trimmed, as transformers does
    assert all(c.keys.shape[-2] == held for c in above)


def test_a_prompt_that_halts_on_a_cache_whose_sliding_layers_dropped_tokens_is_refused():
    """Turn 1 ran past the window halting nothing (its sliding layers trimmed their caches); turn 2 would halt
    on them: refused, rather than attending to keys that are gone."""
    model, tok = build("gemma3_text")
    inputs = make_inputs("gemma3_text", 1)
    with torch.no_grad():
        first = model.generate(**inputs, max_new_tokens=2, do_sample=False, return_dict_in_generate=True)
    turn2 = dict(inputs)
    for t in torch.cat([first.sequences[0, inputs["input_ids"].shape[1]:],
                        tok(" and the tree", return_tensors="pt").input_ids[0]]):
        turn2 = extend(turn2, t.view(1))
    with dashvl.compress(model, method="dash", ratio=0.5, layer=1), torch.no_grad():
        with pytest.raises(ValueError, match=r"sliding-window layer \d+ \(above the activation layer\) already "
                                             r"dropped tokens beyond its window .* start from an empty cache"):
            model.generate(**turn2, cache=first.past_key_values, max_new_tokens=2)


def test_flash_attention_beyond_the_window_and_cuda_graph_true_are_refused():
    model, _ = build("mistral-window")
    inputs = make_inputs("mistral-window", 1)
    with pytest.raises(ValueError, match=r"cuda_graph=True is not available for this model: its layers above the "
                                         r"activation layer are of several kinds"):
        dashvl.compress(model, method="dash", ratio=0.5, layer=1, cuda_graph=True)
    assert dashvl.get_handle(model) is None
    with dashvl.compress(model, method="dash", ratio=0.5, layer=1):
        model.config._attn_implementation = "flash_attention_2"
        try:
            with pytest.raises(ValueError, match=r"sliding-window attention \(window 8\); with flash attention "
                                                 r"dashvl is exact only for sequences within the window.*'sdpa'"):
                model(**inputs)
        finally:
            model.config._attn_implementation = "sdpa"
    assert layers_of(model) is model.model.layers
