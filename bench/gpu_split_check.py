"""Two set-ups the CPU tests cannot reach, on real GPUs: an offloading KV cache under the CUDA-graph path, and a
model split over two GPUs by ``device_map`` (accelerate's hooks), where dashvl runs the halted layers one by one.

- offload: the tests' tiny models, batch 3 (padded), both kv modes; DASH with ``cuda_graph=None`` (the graph
  path) into ``DynamicCache(offloading=True)`` against DASH layer by layer into a plain cache: the same tokens,
  logits within ATOL, and the graph really captured.
- split (with 2 GPUs): the LLM's upper half of layers on the second GPU (so the halted layers run there, the
  activation layer's states come from the first), everything else on the first; unmodified, ratio 0 and DASH
  in both kv modes against the same model on one GPU: the same tokens and halted positions, logits within ATOL;
  ratio 0 bitwise equal to the unmodified split model.

    python bench/gpu_split_check.py             # on the device; exits 1 on a mismatch
    python bench/gpu_split_check.py --devices cpu,cpu --emulate   # the code paths on the CPU (no real split)
"""
from __future__ import annotations

import argparse
import copy
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))
import dashvl  # noqa: E402
from dashvl import graphs  # noqa: E402
from gpu_graph_check import report  # noqa: E402
from helpers import build, generate, layers_of, make_inputs  # noqa: E402

ATOL = 1e-4
FAMILIES = ("qwen2_vl", "llava", "llama")


def diff(a, b) -> float:
    return max((x - y).abs().max().item() for x, y in zip(a.logits, b.logits))


def same(a, b) -> bool:
    return torch.equal(a.sequences.cpu(), b.sequences.cpu())


def offload_check(model, inputs, kv: str) -> dict:
    from transformers import DynamicCache

    def run(graph, offloading):
        with dashvl.compress(model, ratio=0.5, layer=1, kv=kv, cuda_graph=graph) as h:
            out = generate(model, inputs, cache=DynamicCache(config=model.config, offloading=offloading))
            return out, h._graphs.captures if h._graphs else 0

    want, _ = run(False, False)
    got, captures = run(None, True)
    d = diff(got, want)
    return dict(same_tokens=same(got, want), max_logit_diff=d, captures=captures,
                ok=same(got, want) and d < ATOL and captures >= 1)


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


def split_check(model, inputs, devices) -> dict:
    """``model`` is on devices[0]; a copy is split over both."""
    from accelerate import dispatch_model

    split = dispatch_model(copy.deepcopy(model).cpu(), device_map=split_map(model, devices))
    where = {str(p.device) for p in layers_of(split)[-1].parameters()} | {str(p.device) for p in
                                                                         layers_of(split)[0].parameters()}
    res = {"devices of the first and last layer": sorted(where)}
    plain_one, plain_split = generate(model, inputs), generate(split, inputs)
    with dashvl.compress(split, ratio=0.0, layer=1):
        zero = generate(split, inputs)
    res["unmodified split = one GPU"] = same(plain_split, plain_one) and diff(plain_split, plain_one) < ATOL
    res["ratio 0 split bitwise = unmodified split"] = (same(zero, plain_split) and all(
        torch.equal(a, b) for a, b in zip(zero.logits, plain_split.logits)))
    for kv in ("drop", "keep"):
        with dashvl.compress(model, ratio=0.5, layer=1, kv=kv) as h:
            want = generate(model, inputs)
            want_halted = h.trace.halted.cpu()
        with dashvl.compress(split, ratio=0.5, layer=1, kv=kv) as h:
            got = generate(split, inputs)
            got_halted = h.trace.halted.cpu()
            graphs_used = h._graphs.captures if h._graphs else 0
        d = diff(got, want)
        res[f"{kv}: max logit diff"] = d
        res[f"{kv}: same tokens and halted positions"] = (same(got, want) and torch.equal(got_halted, want_halted)
                                                          and d < ATOL)
        res[f"{kv}: graphs captured on the split model"] = graphs_used
    res["ok"] = all(v for k, v in res.items() if k.endswith(("GPU", "split", "positions")))
    del split
    return res


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--devices", default="cuda:0,cuda:1",
                   help="the two devices of the split (the first also holds everything but the upper layers)")
    p.add_argument("--emulate", action="store_true", help="graph path without capture (a CPU smoke test)")
    p.add_argument("--families", default=",".join(FAMILIES))
    p.add_argument("--out", default=os.environ.get("OUT", "/tmp"))
    args = p.parse_args(argv)
    devices = args.devices.split(",")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    before, graphs.EMULATE = graphs.EMULATE, args.emulate
    two = devices[0] != devices[1] and (not devices[1].startswith("cuda") or torch.cuda.device_count() >= 2)
    results = {}
    try:
        for family in args.families.split(","):
            model, _ = build(family)
            model.to(devices[0])
            inputs = {k: v.to(devices[0]) for k, v in make_inputs(family, 3).items()}
            if devices[0].startswith("cuda"):  # an offloading cache needs CUDA
                for kv in ("drop", "keep"):
                    results[f"offload {family} batch 3 {kv}"] = offload_check(model, inputs, kv)
            if two or args.emulate:
                results[f"split {family} batch 3"] = split_check(model, inputs, devices)
            model.to("cpu")
            dashvl.release_graphs(model)
    finally:
        graphs.EMULATE = before
    if not two:
        print(f"note: no split check across devices ({devices}; {torch.cuda.device_count()} CUDA devices)")
    if not report(results, os.path.join(args.out, "gpu_split_check.json"),
                  accelerate=__import__("accelerate").__version__, emulate=args.emulate):
        sys.exit(1)


if __name__ == "__main__":
    main()
