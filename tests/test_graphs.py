"""The CUDA-graph path of the halted layers (dashvl.engine.graphs), run on the CPU in emulation: the same layer
swap, static buffers and replays as on a GPU, with the capture replaced by an eager run. The capture itself
is checked on the GPU by tests/gpu/test_graph_path.py (graph vs layers one by one)."""
import pytest
import torch

import dashvl
from dashvl.engine import graphs
from tests import test_generation, test_reference
from tests.helpers import (Reference, assert_same_generation, build, generate, layers_of, make_inputs, reference_halted,
                     visual_kinds)


@pytest.fixture
def emulate(monkeypatch):
    """Graph path on the CPU; yields a list that records every capture's input shape."""
    monkeypatch.setattr(graphs, "EMULATE", True)
    graphs._BANKS.clear()  # the tests' models are shared: start without graphs of earlier tests
    seen, capture = [], graphs.GraphBank._capture

    def counted(bank, inputs, *args):
        seen.append(tuple(inputs[0].shape))
        return capture(bank, inputs, *args)

    monkeypatch.setattr(graphs.GraphBank, "_capture", counted)
    return seen


def test_bucket_width_adds_less_than_a_sixteenth_or_8():
    widths = [graphs.bucket_width(n) for n in range(1, 5000)]
    assert all(w >= n for n, w in zip(range(1, 5000), widths))
    assert all(w - n < max(8, n / 16) for n, w in zip(range(1, 5000), widths))
    assert widths == sorted(widths)
    assert len({graphs.bucket_width(n) for n in range(1025, 2049)}) == 16  # 1088 … 2048
    assert graphs.bucket_width(272) == 272 and graphs.bucket_width(273) == 288


@pytest.mark.parametrize("family", ["qwen2_vl", "llava", "llama"])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("kv", ["drop", "keep"])
def test_graph_path_matches_reference(emulate, family, attn, batch, kv):
    model, _ = build(family, attn)
    inputs = make_inputs(family, batch)
    ref = Reference(model, 1, kv)
    real = inputs["attention_mask"].bool()
    halted = reference_halted(ref.scores(inputs), real, visual_kinds(model, inputs["input_ids"]), 0.5)
    tokens, logits = ref.greedy(inputs, halted)
    original = layers_of(model)
    with dashvl.compress(model, method="dash", ratio=0.5, layer=1, kv=kv) as h:
        out = generate(model, inputs)
        assert h._graphs.captures == 1  # the prefill took the graph path; decode steps did not
        assert torch.equal(h.trace.halted, halted)
    assert_same_generation(out, inputs, tokens, logits, 2e-4)
    assert layers_of(model) is original


@pytest.mark.parametrize("family", ["qwen2_5_vl", "llava-mistral", "llava-qwen2", "qwen2", "mistral"])
@pytest.mark.parametrize("kv", ["drop", "keep"])
def test_graph_path_matches_reference_on_other_backbones(emulate, family, kv):
    test_reference._check_against_reference(family, "sdpa", 3, kv)
    assert len(emulate) == 1


def test_replays_do_not_disturb_an_earlier_cache(emulate):
    """Two prompts of one shape share a graph and its static buffers; the first one's cache must not change
    when the second replays (the halted layers' keys/values are copied out of the graph)."""
    model, proc = build("llama")
    a = dict(proc(["what colour is the square on the left"], return_tensors="pt"))
    b = dict(a, input_ids=torch.cat([a["input_ids"][:, :1], a["input_ids"][:, 1:].roll(3, 1)], 1))

    def first_two(inputs, graph: bool, interleave=None):
        with dashvl.compress(model, method="dash", ratio=0.5, layer=1, cuda_graph=graph) as h, torch.no_grad():
            out = model(**inputs, use_cache=True)
            if interleave is not None:
                model(**interleave, use_cache=True)
            nxt = out.logits[:, -1:].argmax(-1)
            step = model(input_ids=nxt, cache=out.past_key_values,
                         attention_mask=torch.ones(1, inputs["input_ids"].shape[1] + 1, dtype=torch.long))
            return out.logits, step.logits, h._graphs.captures if h._graphs else 0

    want_prefill, want_step, _ = first_two(a, graph=False)
    got_prefill, got_step, captures = first_two(a, graph=None, interleave=b)
    assert captures == 1
    torch.testing.assert_close(got_prefill, want_prefill, atol=2e-4, rtol=0)
    torch.testing.assert_close(got_step, want_step, atol=2e-4, rtol=0)


def test_shapes_share_graphs_and_later_turns_run_eagerly(emulate):
    model, _ = build("qwen2_vl")
    one, three = make_inputs("qwen2_vl", 1), make_inputs("qwen2_vl", 3)
    with dashvl.compress(model, method="dash", ratio=0.5, layer=1) as h, torch.no_grad():
        model(**one)
        model(**one)
        assert h._graphs.captures == 1
        model(**three)  # another batch size: another graph
        assert h._graphs.captures == 2
    model, _ = build("llama")
    inputs = make_inputs("llama", 1)
    with dashvl.compress(model, method="dash", ratio=0.5, layer=1) as h, torch.no_grad():
        out = model(**inputs, use_cache=True)
        n = inputs["input_ids"].shape[1]
        model(input_ids=torch.tensor([[5, 6, 7]]), attention_mask=torch.ones(1, n + 3, dtype=torch.long),
              cache=out.past_key_values)  # a later turn: no capture, the layers run as usual
        assert h._graphs.captures == 1


@pytest.mark.parametrize("family", ["qwen2_vl", "llava", "llama"])
def test_second_turn_after_a_graph_prefill_matches_reference(emulate, family):
    # the generation tests' own checks, with the first turn's prefill on the graph path
    test_generation.test_second_turn_reuses_the_cache(family, "drop")
    assert len(emulate) == 1


@pytest.mark.parametrize("cache", ["config", "lazy"])
def test_any_dynamic_cache_receives_the_graphs_keys_and_values(emulate, cache):
    """A cache made without a config grows its layers on first use (offloading caches need CUDA: not here)."""
    from transformers import DynamicCache

    model, _ = build("llama")
    inputs = make_inputs("llama", 3)
    made = {"config": lambda: DynamicCache(config=model.config), "lazy": DynamicCache}[cache]

    def run(graph):
        with dashvl.compress(model, method="dash", ratio=0.5, layer=1, cuda_graph=graph):
            return generate(model, inputs, cache=made())

    want, got = run(False), run(None)
    assert len(emulate) == 1
    assert torch.equal(got.sequences, want.sequences)
    for g, w in zip(got.logits, want.logits):
        torch.testing.assert_close(g, w, atol=2e-4, rtol=0)


@pytest.mark.parametrize("family", ["qwen2_vl", "llama"])
def test_keep_mode_second_turn_after_a_graph_prefill_matches_reference(emulate, family):
    # the halted layers' caches hold the frozen tokens' keys/values ahead of the active ones, as one by one
    test_generation.test_second_turn_reuses_the_cache(family, "keep")
    assert len(emulate) == 1


def test_keep_mode_rounds_the_frozen_slots_up_and_masks_the_fillers(emulate):
    """Rows that halt different numbers of tokens (padding) and a bucketed frozen width: filler key slots
    must not be attended to, and the graph must equal the layers run one by one."""
    model, _ = build("llama")
    inputs = make_inputs("llama", 3)
    outs = {}
    for graph in (False, None):
        with dashvl.compress(model, method="dash", ratio=0.6, layer=1, kv="keep", cuda_graph=graph) as h, torch.no_grad():
            outs[graph] = model(**inputs, use_cache=False).logits
            halted = h.trace.halted.sum(1)
    assert len(emulate) == 1 and len(set(halted.tolist())) > 1
    torch.testing.assert_close(outs[None], outs[False], atol=2e-5, rtol=0)


def test_beam_search_after_a_graph_prefill_matches_reference(emulate):
    test_generation.test_beam_search_on_a_padded_batch_matches_reference("drop")
    assert emulate and emulate[0][0] > 3  # the prompts expanded to their beams


def test_training_mode_and_autograd_run_the_layers_one_by_one(emulate):
    model, _ = build("llama")
    inputs = make_inputs("llama", 1)
    with dashvl.compress(model, method="dash", ratio=0.5, layer=1):
        model(**inputs)  # autograd on: no graph
        model.train()
        try:
            with torch.no_grad():
                model(**inputs)  # dropout layers: no graph
        finally:
            model.eval()
        assert emulate == []
        with torch.no_grad():
            model(**inputs)
        assert len(emulate) == 1


def test_layers_are_restored_when_a_halted_layer_raises(emulate):
    model, _ = build("llama")
    inputs = make_inputs("llama", 1)
    original = layers_of(model)

    def boom(module, args, kwargs):
        raise RuntimeError("boom")

    hook = original[3].register_forward_pre_hook(boom, with_kwargs=True)
    try:
        with dashvl.compress(model, method="dash", ratio=0.5, layer=1), torch.no_grad():
            with pytest.raises(RuntimeError, match="boom"):
                model(**inputs)
            assert layers_of(model) is original
    finally:
        hook.remove()
    with torch.no_grad():
        model(**inputs)  # the model works again


def test_long_active_sets_run_the_layers_one_by_one(emulate, monkeypatch):
    model, _ = build("qwen2_vl")
    inputs = make_inputs("qwen2_vl", 3)
    with dashvl.compress(model, method="dash", ratio=0.5, layer=1) as h, torch.no_grad():
        model(**inputs)
        assert (h._graphs.captures, h._graphs.replays) == (1, 0)
        width = int(h.trace.active.sum(1).max())
        monkeypatch.setattr(graphs, "MAX_SLOTS", 3 * graphs.bucket_width(width) - 1)
        seen = []
        hook = layers_of(model)[2].register_forward_pre_hook(lambda m, a: seen.append(a[0].shape[1]))
        try:
            model(**inputs)
        finally:
            hook.remove()
        assert (h._graphs.captures, h._graphs.replays) == (1, 0)
        assert seen == [width]  # the layer itself ran, on the exact width (no filler slots)


def test_graph_settings_are_checked():
    with pytest.raises(ValueError, match="cuda_graph must be None"):
        dashvl.DashConfig(cuda_graph="yes")
    model, _ = build("llama")
    inputs = make_inputs("llama", 1)
    with dashvl.compress(model, method="dash", ratio=0.5, layer=1, cuda_graph=True), torch.no_grad():
        with pytest.raises(ValueError, match="needs the model on a CUDA device"):
            model(**inputs)
    with dashvl.compress(model, method="dash", ratio=0.5, layer=1) as h, torch.no_grad():  # automatic: eager on the CPU
        before = h._graphs.captures
        model(**inputs)
        assert h._graphs.captures == before


def test_graphs_outlive_one_compress_until_released(emulate):
    model, _ = build("llama")
    inputs = make_inputs("llama", 1)
    with torch.no_grad():
        with dashvl.compress(model, method="dash", ratio=0.5, layer=1):
            want = model(**inputs).logits
        with dashvl.compress(model, ratio=0.5, layer=1, method="random"):  # same shapes: the graph replays
            model(**inputs)
        with dashvl.compress(model, method="dash", ratio=0.5, layer=1):
            got = model(**inputs).logits
        assert len(emulate) == 1
        torch.testing.assert_close(got, want, atol=0, rtol=0)
        assert dashvl.release_graphs(model) == 1
        with dashvl.compress(model, method="dash", ratio=0.5, layer=1):
            model(**inputs)
        assert len(emulate) == 2
        model.double()  # the weights move: the graphs of the old ones are dropped, not replayed
        try:
            with dashvl.compress(model, method="dash", ratio=0.5, layer=1):
                model(**inputs)
            assert len(emulate) == 3
        finally:
            model.float()


@pytest.mark.parametrize("kv", ["drop", "keep"])
def test_graph_prefill_leaves_no_filler_slots_in_the_cache(emulate, kv):
    """A batch-1 prompt whose active (and, for kv="keep", halted) counts are not bucket widths: the graph runs
    on bucketed widths, but the cache keeps only the real slots, so its decode steps take no mask (a masked
    step leaves SDPA's flash kernel), and they decode what the layers one by one decode."""
    from dashvl.engine import region
    model, proc = build("llama")
    inputs = proc(["what colour is the small square on the left of the big circle and why is it there "
                   "and what shape is next to it"], return_tensors="pt")
    T = inputs["input_ids"].shape[1]
    outs, lengths = {}, {}
    for graph in (False, None):
        with dashvl.compress(model, method="dash", ratio=0.6, layer=1, kv=kv, cuda_graph=graph) as h:
            with torch.no_grad():
                first = model(**inputs, use_cache=True)
            cache = first.past_key_values
            layout = h._flow.layouts[cache]
            n_active = int((~h.trace.halted).sum())
            if graph is None:
                assert graphs.bucket_width(n_active) > n_active  # the bucket has fillers to leave out
                assert layout.all_valid
                assert region.step_mask(layout, "sdpa", torch.float32) is None
            lengths[graph] = cache.get_seq_length(2)
            outs[graph] = generate(model, inputs)
    assert len(emulate) >= 1
    assert lengths[None] == lengths[False] == (n_active if kv == "drop" else T)
    assert torch.equal(outs[None].sequences, outs[False].sequences)
    for a, b in zip(outs[None].logits, outs[False].logits):
        torch.testing.assert_close(a, b, atol=2e-5, rtol=0)


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("kv", ["drop", "keep"])
def test_graph_path_on_a_static_cache_matches_reference(emulate, batch, kv):
    """The graph prefill stores its real slots into the static cache (kv="drop": the compact halted layers,
    whose filler slots of padded rows are holes), and decoding from there gives the reference's answer."""
    model, _ = build("llama")
    inputs = make_inputs("llama", batch)
    ref = Reference(model, 1, kv)
    real = inputs["attention_mask"].bool()
    halted = reference_halted(ref.scores(inputs), real, visual_kinds(model, inputs["input_ids"]), 0.5)
    tokens, logits = ref.greedy(inputs, halted)
    with dashvl.compress(model, method="dash", ratio=0.5, layer=1, kv=kv) as h:
        out = generate(model, inputs, cache_implementation="static")
        assert h._graphs.captures == 1
    widths = {layer.keys.shape[2] for layer in out.past_key_values.layers}
    assert len(widths) == (2 if kv == "drop" else 1)
    assert_same_generation(out, inputs, tokens, logits, 2e-4)
