"""LLM prefill speed on the GPU at real model shapes: unmodified vs DASH, next to the FLOPs limit.

One call builds the model (random bf16 weights), checks it (ratio 0 bitwise; SDPA's flash kernel runs in
kv="drop"), and times every setting. Run through the device tool:

    python bench/gpu_prefill.py --model qwen2-vl-7b --tokens 1088,2112,4160,16448 --out $OUT

The prompt is text tokens only (LLM prefill; the vision tower is not timed here), batch 1, with a
DynamicCache and logits_to_keep=1 as generate() runs it. Median of --reps after warm-up, CUDA events.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
import dashvl  # noqa: E402
from common import build_model, markdown, time_settings  # noqa: E402


def main(argv=None, **defaults):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="qwen2-vl-7b")
    p.add_argument("--device", default="cuda")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    p.add_argument("--tokens", default="1088,2112,4160,16448")
    p.add_argument("--ratios", default="0,0.5,0.75,0.9")
    p.add_argument("--layers", default="2")
    p.add_argument("--kv", default="drop,keep")
    p.add_argument("--methods", default="dash", help="comma list of dash, random, fastv")
    p.add_argument("--attn", default="sdpa")
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--out", default=os.environ.get("OUT", "/tmp"))
    p.set_defaults(**defaults)
    args = p.parse_args(argv)

    cuda = args.device.startswith("cuda")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = build_model(args.model, args.device, torch.bfloat16 if cuda else torch.float32, attn=args.attn,
                        vision=False)
    vocab = model.config.get_text_config().vocab_size
    device_name = torch.cuda.get_device_name() if cuda else f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"
    info = dict(device=device_name, torch=torch.__version__,
                transformers=__import__("transformers").__version__, python=platform.python_version(),
                model=args.model, attn=args.attn, command=" ".join(sys.argv))
    print(info, flush=True)
    results = []
    for T in [int(t) for t in args.tokens.split(",")]:
        ids = torch.randint(0, min(vocab, 150000), (1, T), device=args.device)

        def make_call():
            return lambda: model(input_ids=ids, use_cache=True, logits_to_keep=1)

        checks = check(model, ids)
        settings = [dict(method=m, ratio=float(r), layer=int(l), kv=kv, scope="all")
                    for m in args.methods.split(",") for l in args.layers.split(",")
                    for kv in args.kv.split(",") for r in args.ratios.split(",")
                    if not (float(r) == 0 and (kv == "keep" or m != "dash"))]
        rows = time_settings(model, make_call, settings, args.reps, args.warmup, cuda=cuda)
        print(f"\n## {args.model}, {T} tokens, {args.attn}, checks: {checks}\n\n{markdown(rows)}", flush=True)
        results.append(dict(tokens=T, checks=checks, rows=rows))
    if cuda:
        info["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
    with open(os.path.join(args.out, f"prefill_{args.model}_{args.device.split(':')[0]}_{args.attn}.json"), "w") as f:
        json.dump(dict(info=info, results=results), f, indent=1)


@torch.no_grad()
def check(model, ids) -> dict:
    """ratio 0 is bitwise the unmodified model; kv="drop" runs on SDPA's flash kernel alone."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    ref = model(input_ids=ids, logits_to_keep=1).logits
    with dashvl.compress(model, ratio=0.0, layer=2):
        same = torch.equal(model(input_ids=ids, logits_to_keep=1).logits, ref)
    out = {"ratio0_bitwise": same}
    if model.config.get_text_config()._attn_implementation == "sdpa" and ids.is_cuda:
        with dashvl.compress(model, ratio=0.75, layer=2, kv="drop"), sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
            logits = model(input_ids=ids, use_cache=True, logits_to_keep=1).logits
        out["drop_on_flash_kernel"] = bool(torch.isfinite(logits).all())
    return out


if __name__ == "__main__":
    main()
