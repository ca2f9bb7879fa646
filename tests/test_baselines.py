"""Baselines in the same harness: random and FastV halting, image downsampling."""
import pytest
import torch

import dashvl
from dashvl.baselines import downsample
from dashvl.tiny import sample_image
from tests.helpers import assert_same_generation, build, generate, make_inputs, Reference, reference_halted, visual_kinds


@pytest.mark.parametrize("family", ["qwen2_vl", "llava"])
def test_fastv_scores_are_the_last_tokens_attention(family):
    """FastV's rank equals the eager attention row of the last token at layer K, averaged over heads."""
    model, _ = build(family, "eager")
    inputs = make_inputs(family, 3, 2)
    with torch.no_grad():
        attn = model(**inputs, output_attentions=True).attentions[2][:, :, -1, :].mean(1)
    real = inputs["attention_mask"].bool()
    with dashvl.compress(model, method="fastv", ratio=0.5, layer=2) as h, torch.no_grad():
        model(**inputs)
    trace = h.trace
    assert trace.scope == "vision" and trace.method == "fastv"
    torch.testing.assert_close(trace.scores[real], attn[real], atol=1e-6, rtol=1e-4)
    want = reference_halted(attn, real, visual_kinds(model, inputs["input_ids"]), 0.5, scope="vision")
    assert torch.equal(trace.halted, want)


def test_fastv_runs_on_sdpa_and_matches_the_reference():
    model, _ = build("qwen2_vl", "sdpa")
    inputs = make_inputs("qwen2_vl", 3)
    with dashvl.compress(model, method="fastv", ratio=0.75, layer=1) as h:
        out = generate(model, inputs)
    halted = h.trace.halted
    assert halted.any() and (h.trace.kinds[halted] == 1).all()
    tokens, logits = Reference(model, 1, "drop").greedy(inputs, halted)
    assert_same_generation(out, inputs, tokens, logits)


def test_random_is_seeded_uniform_and_counted():
    model, _ = build("qwen2_vl")
    inputs = make_inputs("qwen2_vl", 3)
    real = inputs["attention_mask"].bool()
    eligible = real.clone()
    eligible[:, -1] = False  # the last token is protected
    sets, hits = [], torch.zeros(real.shape)
    for seed in range(40):
        with dashvl.compress(model, method="random", ratio=0.5, seed=seed) as h, torch.no_grad():
            model(**inputs)
        halted = h.trace.halted
        assert not (halted & ~eligible).any()
        assert halted.sum(1).tolist() == (eligible.sum(1) // 2).tolist()
        sets.append(halted)
        hits += halted
    with dashvl.compress(model, method="random", ratio=0.5, seed=3) as h, torch.no_grad():
        model(**inputs)
    assert torch.equal(h.trace.halted, sets[3])                   # same seed, same draw
    assert len({tuple(s.flatten().tolist()) for s in sets}) == 40  # seeds differ
    rate = hits[eligible] / 40                                     # each eligible token halts ~half the time
    assert 0.3 < rate.mean() < 0.7 and rate.min() > 0.05 and rate.max() < 0.95


@pytest.mark.parametrize("method", ["random", "fastv"])
@pytest.mark.parametrize("family", ["qwen2_vl", "llava"])
def test_ratio_zero_is_unmodified_for_every_method(method, family):
    model, _ = build(family)
    inputs = make_inputs(family, 3, 2)
    want = generate(model, inputs)
    with dashvl.compress(model, method=method, ratio=0.0, layer=1):
        got = generate(model, inputs)
    assert torch.equal(got.sequences, want.sequences)
    assert torch.equal(torch.stack(got.logits), torch.stack(want.logits))


def test_method_errors():
    with pytest.raises(ValueError, match=r"method must be one of \('dash', 'random', 'fastv', 'snapkv', 'streamingllm', 'dash-avg', 'dash-snap', 'dash-sinks', 'dash-q', 'dash-q-heads', 'divprune', 'v2drop'\)"):
        dashvl.DashConfig(method="tome")
    with pytest.raises(ValueError, match=r"use dashvl.baselines.downsample\(model, processor, ratio\)"):
        dashvl.DashConfig(method="downsample")


def _visual_tokens(inputs, model):
    return int((inputs["input_ids"] == model.config.image_token_id).sum())


@pytest.mark.parametrize("ratio", [0.5, 0.75, 0.9])
def test_downsample_qwen2_vl_shrinks_the_grid(ratio):
    import copy
    model, proc = build("qwen2_vl")
    proc = copy.deepcopy(proc)  # a larger pixel budget than the shared tiny processor's
    proc.image_processor.size = {"shortest_edge": 56 * 56, "longest_edge": 448 * 448}
    image = sample_image(448, 336)
    text = proc.apply_chat_template([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "hi"}]}],
                                    add_generation_prompt=True)
    full = proc(text=[text], images=[image], return_tensors="pt")
    with downsample(model, proc, ratio) as ds:
        small = ds.process(text=[text], images=[image], return_tensors="pt")
        with torch.no_grad():
            model(**small)  # the model accepts the smaller grid
    n, m = _visual_tokens(full, model), _visual_tokens(small, model)
    assert m < n and abs(m - (1 - ratio) * n) <= 0.1 * n, (n, m)


def test_downsample_llava_pools_the_projected_grid():
    model, proc = build("llava")
    image = sample_image()
    text = proc.apply_chat_template([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "hi"}]}],
                                    add_generation_prompt=True)
    full = proc(text=[text], images=[image], return_tensors="pt")
    with downsample(model, proc, 0.75) as ds:
        small = ds.process(text=[text], images=[image], return_tensors="pt")
        with torch.no_grad():
            feats = model.model.get_image_features(pixel_values=small["pixel_values"]).pooler_output[0]
            model(**small)
    n, m = _visual_tokens(full, model), _visual_tokens(small, model)
    assert (n, m) == (16, 4)
    with torch.no_grad():  # pooled features are the 2x2 means of the full grid
        whole = model.model.get_image_features(pixel_values=full["pixel_values"]).pooler_output[0]
    want = whole.view(4, 4, -1).unflatten(0, (2, 2)).unflatten(2, (2, 2)).mean((1, 3)).reshape(4, -1)
    torch.testing.assert_close(feats, want, atol=1e-5, rtol=1e-5)
    assert proc.patch_size == 14  # restored
