"""Beam search, several returned sequences, and a second turn that reuses the cache."""
import pytest
import torch

import dashvl
from tests.helpers import assert_same_generation, build, extend, make_inputs, Reference, reference_halted, visual_kinds

ATOL = 2e-4


def _prompt_halted(model, inputs, layer, kv, ratio):
    ref = Reference(model, layer, kv)
    real = inputs["attention_mask"].bool()
    return ref, reference_halted(ref.scores(inputs), real, visual_kinds(model, inputs["input_ids"]), ratio)


def _with_sequence(inputs, seq):
    """Processor outputs for row 0's prompt continued by ``seq`` [S] (the whole sequence)."""
    out = {k: v for k, v in inputs.items()}
    T = inputs["input_ids"].shape[1]
    for tok in seq[T:]:
        out = extend(out, tok.view(1))
    return out


@pytest.mark.parametrize("family", ["qwen2_vl", "llama", "gemma3_text", "qwen3_vl", "llava_next",
                                    "llava_onevision", "internvl", "gemma3"])
@pytest.mark.parametrize("kv", ["drop", "keep"])
def test_beam_search_scores_match_reference(family, kv):
    model, _ = build(family)
    inputs = make_inputs(family, 1)
    T = inputs["input_ids"].shape[1]
    ref, halted = _prompt_halted(model, inputs, 1, kv, 0.5)
    with dashvl.compress(model, method="dash", ratio=0.5, layer=1, kv=kv), torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=6, num_beams=3, num_return_sequences=3, do_sample=False,
                             length_penalty=0.0, return_dict_in_generate=True, output_scores=True)
    assert out.sequences.shape == (3, T + 6)
    for seq, score in zip(out.sequences, out.sequences_scores):
        full = _with_sequence(inputs, seq)
        h = torch.zeros(full["input_ids"].shape, dtype=torch.bool)
        h[:, :T] = halted
        logp = ref.logits(full, h)[0, T - 1:-1].log_softmax(-1)
        want = logp.gather(1, seq[T:, None]).sum()
        torch.testing.assert_close(score, want, atol=1e-3, rtol=0)


def test_beam_search_ratio_zero_is_unmodified():
    model, _ = build("qwen2_vl")
    inputs = make_inputs("qwen2_vl", 3)
    kw = dict(max_new_tokens=5, num_beams=2, num_return_sequences=2, do_sample=False)
    with torch.no_grad():
        want = model.generate(**inputs, **kw)
        with dashvl.compress(model, method="dash", ratio=0.0, layer=1):
            got = model.generate(**inputs, **kw)
    assert torch.equal(got, want)


@pytest.mark.parametrize("kv", ["drop", "keep"])
def test_sampling_several_sequences_matches_reference(kv):
    model, _ = build("qwen2_vl")
    inputs = make_inputs("qwen2_vl", 1)
    T = inputs["input_ids"].shape[1]
    ref, halted = _prompt_halted(model, inputs, 1, kv, 0.5)
    torch.manual_seed(0)
    with dashvl.compress(model, method="dash", ratio=0.5, layer=1, kv=kv), torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=5, do_sample=True, num_return_sequences=3,
                             return_dict_in_generate=True, output_logits=True)
    assert out.sequences.shape == (3, T + 5)
    assert len({tuple(s.tolist()) for s in out.sequences}) > 1
    for row, seq in enumerate(out.sequences):
        full = _with_sequence(inputs, seq)
        h = torch.zeros(full["input_ids"].shape, dtype=torch.bool)
        h[:, :T] = halted
        want = ref.logits(full, h)[0, T - 1:-1]
        got = torch.stack([step[row] for step in out.logits])
        torch.testing.assert_close(got, want, atol=ATOL, rtol=0)


@pytest.mark.parametrize("family", ["llama", "qwen2_vl", "gemma3_text", "mistral-window", "qwen3_vl", "llava_next",
                                    "llava_onevision", "internvl", "gemma3"])
@pytest.mark.parametrize("kv", ["drop", "keep"])
def test_second_turn_reuses_the_cache(family, kv):
    model, tok = build(family)
    inputs = make_inputs(family, 1)
    ratio, layer = 0.5, 1
    with dashvl.compress(model, method="dash", ratio=ratio, layer=layer, kv=kv) as handle, torch.no_grad():
        first = model.generate(**inputs, max_new_tokens=4, do_sample=False, return_dict_in_generate=True)
        halted_1 = handle.trace.halted
        tokenizer = getattr(tok, "tokenizer", tok)
        more = tokenizer(" and what is on the right of the house?", return_tensors="pt").input_ids
        turn2 = dict(inputs)
        for t in torch.cat([first.sequences[0, inputs["input_ids"].shape[1]:], more[0]]):
            turn2 = extend(turn2, t.view(1))
        # the image is in the cache already: the second turn sends only ids (as a chat client would)
        text_only = {k: v for k, v in turn2.items() if k not in ("pixel_values", "image_grid_thw", "image_sizes")}
        second = model.generate(**text_only, cache=first.past_key_values, max_new_tokens=4,
                                do_sample=False, return_dict_in_generate=True, output_logits=True)
        # generate's cache holds all but the last generated token: turn 2's prefill starts with it
        assert handle.trace.halted.shape[1] == more.shape[1] + 1

    # reference: turn 1's halted prompt tokens stay halted; turn 2 halts among its own new prompt tokens
    _assert_second_turn_matches_reference(model, turn2, second, kv, ratio, layer, first.sequences.shape[1] - 1,
                                          halted_before=halted_1)


@pytest.mark.parametrize("kv", ["drop", "keep"])
def test_compressing_between_turns_keeps_the_first_turns_padding_masked(kv):
    """Turn 1 ran unmodified on a left-padded batch; turn 2 halts: the padding in the cache stays masked."""
    model, tok = build("llama")
    inputs = make_inputs("llama", 3)
    with torch.no_grad():
        first = model.generate(**inputs, max_new_tokens=3, do_sample=False, return_dict_in_generate=True)
    more = tok([" describe the big red square"] * 3, return_tensors="pt").input_ids
    turn2 = dict(inputs)
    for t in torch.cat([first.sequences[:, inputs["input_ids"].shape[1]:], more], 1).T:
        turn2 = extend(turn2, t)
    with dashvl.compress(model, method="dash", ratio=0.5, layer=1, kv=kv), torch.no_grad():
        second = model.generate(**turn2, cache=first.past_key_values, max_new_tokens=4, do_sample=False,
                                return_dict_in_generate=True, output_logits=True)
    _assert_second_turn_matches_reference(model, turn2, second, kv, 0.5, 1, first.sequences.shape[1] - 1)


def _assert_second_turn_matches_reference(model, turn2, second, kv, ratio, layer, start, halted_before=None):
    """Turn 2 (``second``, 4 new tokens) equals the reference: its prompt tokens from ``start`` on halt by the
    rule, and the tokens ``halted_before`` (turn 1's halting, if it halted) stay halted."""
    ref = Reference(model, layer, kv)
    real = turn2["attention_mask"].bool()
    halted = reference_halted(ref.scores(turn2), real, visual_kinds(model, turn2["input_ids"]), ratio, start=start)
    if halted_before is not None:
        halted[:, :halted_before.shape[1]] |= halted_before
    tokens, logits = ref.greedy(turn2, halted, steps=4)
    assert_same_generation(second, turn2, tokens, logits, ATOL)


@pytest.mark.parametrize("kv", ["drop", "keep"])
def test_beam_search_on_a_padded_batch_matches_reference(kv):
    """Beams of different prompts (rows halting different tokens) reorder within their own group."""
    model, _ = build("llama")
    inputs = make_inputs("llama", 3)
    T = inputs["input_ids"].shape[1]
    ref, halted = _prompt_halted(model, inputs, 1, kv, 0.5)
    with dashvl.compress(model, method="dash", ratio=0.5, layer=1, kv=kv), torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=5, num_beams=3, num_return_sequences=2, do_sample=False,
                             length_penalty=0.0, return_dict_in_generate=True, output_scores=True)
    for i, (seq, score) in enumerate(zip(out.sequences, out.sequences_scores)):
        b = i // 2
        row = {k: v[b:b + 1] for k, v in inputs.items()}
        full = _with_sequence(row, seq)
        h = torch.zeros(full["input_ids"].shape, dtype=torch.bool)
        h[:, :T] = halted[b]
        logp = ref.logits(full, h)[0, T - 1:-1].log_softmax(-1)
        torch.testing.assert_close(score, logp.gather(1, seq[T:, None]).sum(), atol=1e-3, rtol=0)
