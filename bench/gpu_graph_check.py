"""The CUDA-graph path on a real GPU: what it generates equals the halted layers run one by one.

The CPU tests hold the one-by-one path to a slow full-length reference and run the graph path in emulation
(everything but the capture). This script closes the gap on a GPU: the test suite's tiny models in float32
(TF32 off), on every backbone they build (Qwen2-VL, Qwen2.5-VL, LLaVA on Llama, Mistral and Qwen2, plain
Llama, Qwen2 and Mistral): greedy generation of batch 1 and a padded batch 3 in both kv modes, beam search, two
prompts of one shape sharing a graph while both caches stay in use, and replays of a captured graph. With
``--bundled N``, also the two bundled models answering N test questions per family both ways.

    python bench/gpu_graph_check.py --bundled 100      # on the device; exits 1 on a mismatch
    python bench/gpu_graph_check.py --device cpu --emulate   # the same code paths on the CPU
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))
sys.path.insert(0, HERE)
import dashvl  # noqa: E402
from dashvl import graphs  # noqa: E402
from helpers import build, generate, make_inputs  # noqa: E402

ATOL = 1e-4
# every backbone the CPU tests build: the two model families, LLaVA on other text models, plain decoders
# (Mistral with its sliding-window cache)
FAMILIES = ("qwen2_vl", "qwen2_5_vl", "llava", "llava-mistral", "llava-qwen2", "llama", "qwen2", "mistral")


def compare(model, inputs, kv="drop", **kw) -> dict:
    with dashvl.compress(model, ratio=0.5, layer=1, kv=kv, cuda_graph=False):
        want = generate(model, inputs, **kw)
    with dashvl.compress(model, ratio=0.5, layer=1, kv=kv, cuda_graph=None) as h:
        got = generate(model, inputs, **kw)
        again = generate(model, inputs, **kw)  # a replay of the graph just captured
        counts = (h._graphs.captures, h._graphs.replays)
    diff = max((g - w).abs().max().item() for run in (got, again) for g, w in zip(run.logits, want.logits))
    same = torch.equal(got.sequences, want.sequences) and torch.equal(again.sequences, want.sequences)
    return dict(same_tokens=same, max_logit_diff=diff, captures=counts[0], replays=counts[1],
                ok=same and diff < ATOL and counts[0] >= 1 and counts[1] >= 1)


def two_caches(model, proc, device) -> dict:
    """Prompt a, then prompt b of the same shape (a replay over a's static buffers), then a's next step."""
    a = {k: v.to(device) for k, v in proc(["what colour is the square on the left"], return_tensors="pt").items()}
    b = dict(a, input_ids=torch.cat([a["input_ids"][:, :1], a["input_ids"][:, 1:].roll(3, 1)], 1))
    out = {}
    for mode in (False, None):
        with dashvl.compress(model, ratio=0.5, layer=1, cuda_graph=mode), torch.no_grad():
            first = model(**a, use_cache=True)
            model(**b, use_cache=True)
            nxt = first.logits[:, -1:].argmax(-1)
            mask = torch.ones(1, a["input_ids"].shape[1] + 1, dtype=torch.long, device=device)
            out[mode] = model(input_ids=nxt, attention_mask=mask, cache=first.past_key_values).logits
    diff = (out[None] - out[False]).abs().max().item()
    return dict(max_logit_diff=diff, ok=diff < ATOL)


def bundled(name: str, per_family: int, device: str) -> dict:
    """A bundled model (float32) answering ``per_family`` test questions per family under DASH (ratio 0.5, layer 1),
    the halted layers as a graph against one by one, in both kv modes: the same answers."""
    from train_synth import evaluate

    model, processor = dashvl.load_model(name, device=device, dtype=torch.float32)
    out = {}
    for kv in ("drop", "keep"):
        runs = {}
        for graph in (False, None):
            with dashvl.compress(model, ratio=0.5, layer=1, kv=kv, cuda_graph=graph) as h:
                # batches of 4: LLaVA's 576 image tokens at ratio 0.5 fit the graph path's slot limit 4 at a time
                runs[graph] = evaluate(model, processor, per_family, batch=4, workers=0, device=device,
                                       log=lambda *a: None, every_answer=True)
                captures = h._graphs.captures if h._graphs else 0
        answers = [[e["generated"] for e in runs[g]["examples"]] for g in (False, None)]
        acc = {g: round(100 * sum(runs[g]["accuracy"].values()) / len(runs[g]["accuracy"]), 1) for g in runs}
        assert len(answers[0]) == 6 * per_family
        out[kv] = dict(same_answers=answers[0] == answers[1],
                       mean_accuracy_graph=acc[None], mean_accuracy_one_by_one=acc[False], captures=captures)
    out["ok"] = all(r["same_answers"] and r["captures"] >= 1 for r in (out["drop"], out["keep"]))
    dashvl.release_graphs(model)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--emulate", action="store_true", help="run the graph path without capture (CPU smoke test)")
    p.add_argument("--out", default=os.environ.get("OUT", "/tmp"))
    p.add_argument("--bundled", type=int, default=0, metavar="N",
                   help="also the bundled models on N test questions per family (graph vs one by one: same answers)")
    p.add_argument("--families", default=",".join(FAMILIES),
                   help="the tests' tiny models to check (default: every backbone the tests build)")
    args = p.parse_args(argv)
    before, graphs.EMULATE = graphs.EMULATE, args.emulate
    try:
        run_checks(args)
    finally:
        graphs.EMULATE = before  # a caller in the same process (the CPU smoke test) gets it back as it was


def run_checks(args):
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    results = {}
    for family in args.families.split(","):
        model, proc = build(family)
        model.to(args.device)
        for batch in (1, 3):
            inputs = {k: v.to(args.device) for k, v in make_inputs(family, batch).items()}
            for kv in ("drop", "keep"):
                results[f"{family} batch {batch} {kv}"] = compare(model, inputs, kv)
        if family == "llama":
            inputs = {k: v.to(args.device) for k, v in make_inputs(family, 3).items()}
            results["llama beam search, batch 3 x 3 beams"] = compare(model, inputs, num_beams=3)
            results["llama two caches, one graph"] = two_caches(model, proc, args.device)
        model.to("cpu")
        dashvl.release_graphs(model)
    for name in ("qwen2-vl-synth", "llava-synth") if args.bundled else ():
        results[f"bundled {name}, {args.bundled} per family"] = bundled(name, args.bundled, args.device)
    if not report(results, os.path.join(args.out, "gpu_graph_check.json"), emulate=args.emulate):
        sys.exit(1)


def report(results: dict, path: str, **meta) -> bool:
    """One line per check, and the checks with the machine and versions as JSON at ``path``; True if all passed."""
    for name, r in results.items():
        print(f"{'ok  ' if r['ok'] else 'FAIL'} {name}: " + ", ".join(f"{k}={v}" for k, v in r.items() if k != "ok"))
    with open(path, "w") as f:
        json.dump(dict(device=torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
                       cuda_devices=torch.cuda.device_count(), torch=torch.__version__,
                       transformers=__import__("transformers").__version__, **meta, results=results), f, indent=1)
    return all(r["ok"] for r in results.values())


if __name__ == "__main__":
    main()
