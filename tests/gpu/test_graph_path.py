"""The CUDA-graph path on a real GPU: what it generates equals the halted layers run one by one.

The CPU tests hold the one-by-one path to a slow full-length reference and run the graph path in emulation
(everything but the capture). These close the gap on a GPU: the test suite's tiny models in float32 (TF32 off), on
every backbone they build, greedy generation of batch 1 and a padded batch 3 in both kv modes, beam search, two
prompts of one shape sharing a graph while both caches stay in use, replays of a captured graph, and the two
bundled models answering ``DASHVL_GPU_BUNDLED`` (default 25) test questions per family both ways.

    python -m pytest tests/gpu        # on the device
"""
import os

import pytest
import torch

import dashvl
from tests.helpers import build, generate, make_inputs

ATOL = 1e-4
# every backbone the CPU tests build whose halted layers are of one kind: the vision-language families, LLaVA on
# other text models, plain decoders (Mistral with its sliding-window cache, window longer than the prompts)
BACKBONES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "llava", "llava_next", "llava_onevision", "internvl",
             "llava-mistral", "llava-qwen2", "llama", "qwen2", "mistral")
# halted layers of several kinds (sliding-window and global, per-kind rotary embeddings): no graph path, so the
# check is that the layers run one by one on the GPU give what they give on the CPU
SEVERAL_KINDS = ("gemma3", "gemma3_text", "mistral-window")
CROSS_DEVICE_ATOL = 1e-3  # float32 GPU against CPU kernels: summation order only


def compare(model, inputs, kv="drop", **kw) -> dict:
    with dashvl.compress(model, method="dash", ratio=0.5, layer=1, kv=kv, cuda_graph=False):
        want = generate(model, inputs, **kw)
    with dashvl.compress(model, method="dash", ratio=0.5, layer=1, kv=kv, cuda_graph=None) as h:
        got = generate(model, inputs, **kw)
        again = generate(model, inputs, **kw)  # a replay of the graph just captured
        counts = (h._graphs.captures, h._graphs.replays)
    diff = max((g - w).abs().max().item() for run in (got, again) for g, w in zip(run.logits, want.logits))
    same = torch.equal(got.sequences, want.sequences) and torch.equal(again.sequences, want.sequences)
    return dict(same_tokens=same, max_logit_diff=diff, captures=counts[0], replays=counts[1],
                ok=same and diff < ATOL and counts[0] >= 1 and counts[1] >= 1)


@pytest.mark.parametrize("family", BACKBONES)
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("kv", ["drop", "keep"])
def test_graph_equals_layers_one_by_one(on_gpu, cuda, record, family, batch, kv):
    model, _ = on_gpu(family)
    inputs = {k: v.to(cuda) for k, v in make_inputs(family, batch).items()}
    result = compare(model, inputs, kv)
    record(result)
    assert result["ok"], result


@pytest.mark.parametrize("family", SEVERAL_KINDS)
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("kv", ["drop", "keep"])
def test_several_layer_kinds_match_the_cpu(on_gpu, cuda, record, family, batch, kv):
    model, _ = build(family)
    inputs = make_inputs(family, batch)
    config = dict(method="dash", ratio=0.5, layer=1, kv=kv)
    with dashvl.compress(model, **config):
        want = generate(model, inputs)
    model, _ = on_gpu(family)
    with dashvl.compress(model, **config) as h:
        got = generate(model, {k: v.to(cuda) for k, v in inputs.items()})
        graph = h._graphs is not None
    diff = max((g.cpu() - w).abs().max().item() for g, w in zip(got.logits, want.logits))
    same = torch.equal(got.sequences.cpu(), want.sequences)
    result = dict(same_tokens=same, max_logit_diff=diff, graph_path=graph,
                  ok=same and diff < CROSS_DEVICE_ATOL and not graph)
    record(result)
    assert result["ok"], result


def test_beam_search(on_gpu, cuda, record):
    model, _ = on_gpu("llama")
    inputs = {k: v.to(cuda) for k, v in make_inputs("llama", 3).items()}
    result = compare(model, inputs, num_beams=3)
    record(result)
    assert result["ok"], result


def test_two_caches_share_one_graph(on_gpu, cuda, record):
    """Prompt a, then prompt b of the same shape (a replay over a's static buffers), then a's next step."""
    model, proc = on_gpu("llama")
    a = {k: v.to(cuda) for k, v in proc(["what colour is the square on the left"], return_tensors="pt").items()}
    b = dict(a, input_ids=torch.cat([a["input_ids"][:, :1], a["input_ids"][:, 1:].roll(3, 1)], 1))
    out = {}
    for mode in (False, None):
        with dashvl.compress(model, method="dash", ratio=0.5, layer=1, cuda_graph=mode), torch.no_grad():
            first = model(**a, use_cache=True)
            model(**b, use_cache=True)
            nxt = first.logits[:, -1:].argmax(-1)
            mask = torch.ones(1, a["input_ids"].shape[1] + 1, dtype=torch.long, device=cuda)
            out[mode] = model(input_ids=nxt, attention_mask=mask, cache=first.past_key_values).logits
    diff = (out[None] - out[False]).abs().max().item()
    record(dict(max_logit_diff=diff))
    assert diff < ATOL


@pytest.mark.parametrize("name", ["qwen2-vl-synth", "llava-synth"])
@pytest.mark.parametrize("kv", ["drop", "keep"])
def test_bundled_models_answer_the_same(cuda, record, name, kv):
    """A bundled model (float32) answering test questions under DASH (ratio 0.5, layer 1), the halted layers as a
    graph and one by one: the same answers."""
    from synthvqa.evaluate import evaluate

    per_family = int(os.environ.get("DASHVL_GPU_BUNDLED", "25"))
    model, processor = dashvl.load_model(name, device=cuda, dtype=torch.float32)
    runs, captures = {}, 0
    for graph in (False, None):
        with dashvl.compress(model, method="dash", ratio=0.5, layer=1, kv=kv, cuda_graph=graph) as h:
            # batches of 4: LLaVA's 576 image tokens at ratio 0.5 fit the graph path's slot limit 4 at a time
            runs[graph] = evaluate(model, processor, per_family, batch=4, workers=0, device=cuda,
                                   log=lambda *a: None, every_answer=True)
            captures = h._graphs.captures if h._graphs else 0
    dashvl.release_graphs(model)
    answers = [[e["generated"] for e in runs[g]["examples"]] for g in (False, None)]
    acc = {g: round(100 * sum(runs[g]["accuracy"].values()) / len(runs[g]["accuracy"]), 1) for g in runs}
    record(dict(per_family=per_family, same_answers=answers[0] == answers[1], mean_accuracy_graph=acc[None],
                mean_accuracy_one_by_one=acc[False], captures=captures))
    assert len(answers[0]) == 6 * per_family
    assert answers[0] == answers[1] and captures >= 1
