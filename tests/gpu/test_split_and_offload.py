"""Two set-ups the CPU tests cannot reach, on real GPUs: an offloading KV cache under the CUDA-graph path, and a
model split over two GPUs by ``device_map`` (accelerate's hooks), where dashvl runs the halted layers one by one.

- offload: the tests' tiny models, batch 3 (padded), both kv modes; DASH with ``cuda_graph=None`` (the graph
  path) into ``DynamicCache(offloading=True)`` against DASH layer by layer into a plain cache: the same tokens,
  logits within ATOL, and the graph really captured.
- split (needs 2 GPUs): the LLM's upper half of layers on the second GPU (so the halted layers run there, the
  activation layer's states come from the first), everything else on the first; unmodified, ratio 0 and DASH in
  both kv modes against the same model on one GPU: the same tokens and halted positions, logits within ATOL;
  ratio 0 bitwise equal to the unmodified split model.
"""
import copy

import pytest
import torch

import dashvl
from tests.helpers import build, generate, layers_of, make_inputs

ATOL = 1e-4
BACKBONES = ("qwen2_vl", "llava", "llama")


def _diff(a, b) -> float:
    return max((x - y).abs().max().item() for x, y in zip(a.logits, b.logits))


def _same(a, b) -> bool:
    return torch.equal(a.sequences.cpu(), b.sequences.cpu())


def split_map(model, devices) -> dict:
    """accelerate device map: the LLM's layers from half-way on ``devices[1]``, every other module ``devices[0]``."""
    layers = layers_of(model)
    prefix = next(n for n, m in model.named_modules() if m is layers) + "."
    half = len(layers) // 2
    out = {}
    for name, _ in list(model.named_parameters()) + list(model.named_buffers()):
        module = name.rpartition(".")[0]
        upper = module.startswith(prefix) and int(module[len(prefix):].split(".")[0]) >= half
        out[module] = devices[1] if upper else devices[0]
    return out


def test_split_map_puts_the_upper_layers_on_the_second_device():
    model, _ = build("llama")
    dm = split_map(model, ["a", "b"])
    assert dm["model.layers.1.self_attn.q_proj"] == "a" and dm["model.layers.2.mlp.up_proj"] == "b"
    assert dm["model.embed_tokens"] == "a" and dm["lm_head"] == "a" and set(dm.values()) == {"a", "b"}


@pytest.fixture
def gpu_model(on_gpu, cuda):
    """``gpu_model(family) -> (model on the GPU, a padded batch of 3 there)``."""
    def get(family):
        model, _ = on_gpu(family)
        return model, {k: v.to(cuda) for k, v in make_inputs(family, 3).items()}
    return get


@pytest.mark.parametrize("family", BACKBONES)
@pytest.mark.parametrize("kv", ["drop", "keep"])
def test_offloading_cache_under_the_graph_path(gpu_model, record, family, kv):
    from transformers import DynamicCache

    model, inputs = gpu_model(family)

    def run(graph, offloading):
        with dashvl.compress(model, method="dash", ratio=0.5, layer=1, kv=kv, cuda_graph=graph) as h:
            out = generate(model, inputs, cache=DynamicCache(config=model.config, offloading=offloading))
            return out, h._graphs.captures if h._graphs else 0

    want, _ = run(False, False)
    got, captures = run(None, True)
    d = _diff(got, want)
    record(dict(same_tokens=_same(got, want), max_logit_diff=d, captures=captures))
    assert _same(got, want) and d < ATOL and captures >= 1


@pytest.mark.parametrize("family", BACKBONES)
def test_split_over_two_gpus(gpu_model, record, family):
    """``model`` on cuda:0; a copy split over cuda:0 and cuda:1."""
    if torch.cuda.device_count() < 2:
        pytest.skip("needs 2 GPUs")
    from accelerate import dispatch_model

    model, inputs = gpu_model(family)
    devices = ["cuda:0", "cuda:1"]
    split = dispatch_model(copy.deepcopy(model).cpu(), device_map=split_map(model, devices))
    where = {str(p.device) for p in layers_of(split)[-1].parameters()} | {str(p.device) for p in
                                                                         layers_of(split)[0].parameters()}
    res = {"devices of the first and last layer": sorted(where)}
    plain_one, plain_split = generate(model, inputs), generate(split, inputs)
    with dashvl.compress(split, method="dash", ratio=0.0, layer=1):
        zero = generate(split, inputs)
    res["unmodified split = one GPU"] = _same(plain_split, plain_one) and _diff(plain_split, plain_one) < ATOL
    res["ratio 0 split bitwise = unmodified split"] = (_same(zero, plain_split) and all(
        torch.equal(a, b) for a, b in zip(zero.logits, plain_split.logits)))
    for kv in ("drop", "keep"):
        with dashvl.compress(model, method="dash", ratio=0.5, layer=1, kv=kv) as h:
            want = generate(model, inputs)
            want_halted = h.trace.halted.cpu()
        with dashvl.compress(split, method="dash", ratio=0.5, layer=1, kv=kv) as h:
            got = generate(split, inputs)
            got_halted = h.trace.halted.cpu()
            graphs_used = h._graphs.captures if h._graphs else 0
        d = _diff(got, want)
        res[f"{kv}: max logit diff"] = d
        res[f"{kv}: same tokens and halted positions"] = (_same(got, want) and torch.equal(got_halted, want_halted)
                                                          and d < ATOL)
        res[f"{kv}: graphs captured on the split model"] = graphs_used
    record(res)
    assert all(v for k, v in res.items() if k.endswith(("GPU", "split", "positions"))), res
