"""kv="keep" prefill speed: SDPA's masked kernel against keep_attention (no mask: rank-ordered keys, a prefix and
a causal local varlen call per chunk of queries, merged by log-sum-exp), next to kv="drop" and the FLOPs limit.

One process, round-robin, median of --reps after warm-up, CUDA events (as bench.gpu_prefill). Each keep variant
switches ``dashvl.engine.keep_attention.MODE`` ("never": SDPA's mask, CUDA graph where the graph path takes it;
"always": keep_attention) and, for "keep fast copy", reads each chunk's prefix from a copy (``shared_prefix``
False). Before timing, at each length, the fast path is checked against the masked one: the same halted tokens
and the prefill logits' largest difference (bf16).

    python -m bench.gpu_keep --model qwen2-vl-7b --tokens 1088,4160,16448
    python -m bench.gpu_keep --model qwen2-vl-7b --attn flash_attention_4     # FA4: keep runs only the fast way
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch

import dashvl
from bench.common import _timed, markdown, model_args, setup, text_config
from dashvl.engine import keep_attention as ka
from dashvl.flops import flops_speedup


def variants(ratios, layer: int, flash: bool):
    """(name, compress kwargs or None, keep MODE, shared_prefix) to time."""
    out = [("unmodified", None, None, None)]
    for r in ratios:
        out.append((f"drop {r}", dict(method="dash", scope="all", ratio=r, layer=layer, kv="drop"), "auto", None))
        if not flash:
            out.append((f"keep {r} masked", dict(method="dash", scope="all", ratio=r, layer=layer, kv="keep"), "never", None))
        out.append((f"keep {r} fast", dict(method="dash", scope="all", ratio=r, layer=layer, kv="keep"), "always", True))
        out.append((f"keep {r} fast copy", dict(method="dash", scope="all", ratio=r, layer=layer, kv="keep"), "always", False))
    return out


def _run_with(model, kwargs, mode, shared, kernel):
    ka.MODE = mode or "auto"
    if kernel is not None and shared is not None:
        kernel.shared_prefix = shared
    return dashvl.compress(model, **kwargs)


def check(model, inputs, ratio, layer) -> dict:
    """Fast keep against masked keep at one length (SDPA only)."""
    out = {}
    with torch.no_grad():
        for mode in ("never", "always"):
            ka.MODE = mode
            with dashvl.compress(model, method="dash", scope="all", ratio=ratio, layer=layer, kv="keep") as h:
                out[mode] = model(**inputs, use_cache=True, logits_to_keep=1).logits.float()
                out[mode, "halted"] = h.trace.halted.clone()
    ka.MODE = "auto"
    return dict(same_halted=torch.equal(out["never", "halted"], out["always", "halted"]),
                logits_max_diff=(out["never"] - out["always"]).abs().max().item(),
                logits_scale=out["never"].abs().max().item())


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    model_args(p)
    p.add_argument("--tokens", default="1088,4160,16448")
    p.add_argument("--ratios", default="0.5,0.75")
    p.add_argument("--layer", type=int, default=2)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--out", default=os.environ.get("OUT", "/tmp"))
    p.add_argument("--tag", default="")
    args = p.parse_args(argv)
    model, cuda, info = setup(args, "bench.gpu_keep", argv)
    flash = args.attn.startswith("flash")
    kernel = ka.kernel_for(args.attn, next(model.parameters()).device, next(model.parameters()).dtype)
    info["kernel"] = type(kernel).__name__
    info["chunk"], info["span"] = ka.CHUNK, ka.SPAN
    ratios = [float(r) for r in args.ratios.split(",")]
    todo = variants(ratios, args.layer, flash)
    results = []
    vocab = model.config.get_text_config().vocab_size
    for T in [int(t) for t in args.tokens.split(",")]:
        torch.manual_seed(T)
        inputs = dict(input_ids=torch.randint(0, min(vocab, 150000), (1, T), device=args.device))
        call = lambda: model(**inputs, use_cache=True, logits_to_keep=1)  # noqa: E731
        checks = check(model, inputs, ratios[-1], args.layer) if not flash else {}
        samples = {name: [] for name, *_ in todo}
        limits, work = {"unmodified": 1.0}, {}
        with torch.no_grad():
            t0 = time.perf_counter()
            while time.perf_counter() - t0 < 3:  # clocks up
                call()
            failed = {}
            for rep in range(args.warmup + args.reps):
                for name, kwargs, mode, shared in todo:
                    if name in failed:
                        continue
                    if kwargs is None:
                        timing = _timed(call, cuda)
                    else:
                        try:
                            with _run_with(model, kwargs, mode, shared, kernel) as h:
                                timing = _timed(call, cuda)
                                if rep == 0:
                                    limits[name] = flops_speedup(text_config(model), h.trace)
                        except Exception as err:  # a kernel variant this build does not take: recorded, skipped
                            failed[name] = f"{type(err).__name__}: {err}"[:300]
                            print(f"{name}: {failed[name]}", flush=True)
                            continue
                    if rep >= args.warmup:
                        samples[name].append(timing)
        ka.MODE = "auto"
        base = statistics.median(t for t, _ in samples["unmodified"])
        rows = []
        checks["failed"] = failed
        for name, *_ in todo:
            if name in failed:
                continue
            ms = statistics.median(t for t, _ in samples[name])
            host = statistics.median(h for _, h in samples[name])
            rows.append(dict(setting=name, ms=ms, host_ms=host, speedup=base / ms, limit=limits[name]))
        print(f"\n## {args.model}, {T} tokens, {args.attn} ({info['kernel']}); checks: {checks}\n\n{markdown(rows)}",
              flush=True)
        results.append(dict(tokens=T, checks=checks, rows=rows))
    name = f"keep_{args.model}_{args.attn}{args.tag}.json"
    with open(os.path.join(args.out, name), "w") as f:
        json.dump(dict(info=info, results=results), f, indent=1)


if __name__ == "__main__":
    main()
