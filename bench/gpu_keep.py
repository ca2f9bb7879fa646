"""kv="keep" prefill speed: SDPA's masked kernel against keep_attention (no mask: rank-ordered keys, a prefix and
a causal local varlen call per chunk of queries, merged by log-sum-exp), next to kv="drop" and the FLOPs limit.

One process, round-robin, median of --reps after warm-up, CUDA events (as bench.gpu_prefill). Each keep variant
switches ``dashvl.engine.keep_attention.MODE`` ("never": SDPA's mask, CUDA graph where the graph path takes it;
"always": keep_attention, its chunking captured in the graph where the graph path takes the call; "layers": the
layers one by one). Before timing, at each length, the fast path is checked against the masked one: the same halted tokens
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
from dashvl.adapters import frozen_hidden
from dashvl.engine import keep_attention as ka
from dashvl.flops import flops_speedup


def variants(ratios, layer: int, flash: bool, chunks):
    """(name, compress kwargs or None, keep MODE, CHUNK) to time; "layers": cuda_graph=False."""
    out = [("unmodified", None, None, None)]
    for r in ratios:
        dash = dict(method="dash", scope="all", ratio=r, layer=layer)
        out.append((f"drop {r}", dict(dash, kv="drop"), "auto", None))
        if not flash:
            out.append((f"keep {r} masked", dict(dash, kv="keep"), "never", None))
        for c in chunks:
            out.append((f"keep {r} fast c{c}", dict(dash, kv="keep"), "always", c))
        # the halted layers' input norm run whole on the frozen tokens (before adapters/frozen_hidden.py)
        out.append((f"keep {r} fast c{chunks[0]} unshared norm", dict(dash, kv="keep"), "always", chunks[0]))
        out.append((f"keep {r} fast c{chunks[0]} layers", dict(dash, kv="keep", cuda_graph=False), "always", chunks[0]))
    return out


def _run_with(model, kwargs, mode, chunk, name=""):
    ka.MODE = mode or "auto"
    ka.CHUNK = chunk or ka.CHUNK
    frozen_hidden.SHARE = not name.endswith("unshared norm")
    return dashvl.compress(model, **kwargs)


def profile(model, call, kwargs, mode, chunk, top: int = 24) -> str:
    """The CUDA kernels of one prefill with ``kwargs`` (keep MODE ``mode``), by total device time."""
    from torch.profiler import ProfilerActivity
    ka.MODE, ka.CHUNK = mode, chunk or ka.CHUNK
    with torch.no_grad(), dashvl.compress(model, **kwargs):
        call()
        torch.cuda.synchronize()
        with torch.profiler.profile(activities=[ProfilerActivity.CUDA]) as prof:
            call()
            torch.cuda.synchronize()
    ka.MODE = "auto"
    return prof.key_averages().table(sort_by="cuda_time_total", row_limit=top, max_name_column_width=60)


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
    p.add_argument("--chunks", default="128,256", help="keep_attention.CHUNK values to time")
    p.add_argument("--profile", default="", help="comma list of lengths at which to print the kernels of keep 0.75")
    args = p.parse_args(argv)
    model, cuda, info = setup(args, "bench.gpu_keep", argv)
    flash = args.attn.startswith("flash")
    kernel = ka.kernel_for(args.attn, next(model.parameters()).device, next(model.parameters()).dtype)
    info["kernel"] = type(kernel).__name__
    info["chunk"] = ka.CHUNK
    ratios = [float(r) for r in args.ratios.split(",")]
    chunk_sizes = [int(c) for c in args.chunks.split(",")]
    todo = variants(ratios, args.layer, flash, chunk_sizes)
    default_chunk = ka.CHUNK
    results = []
    vocab = model.config.get_text_config().vocab_size
    for T in [int(t) for t in args.tokens.split(",")]:
        torch.manual_seed(T)
        inputs = dict(input_ids=torch.randint(0, min(vocab, 150000), (1, T), device=args.device))
        call = lambda: model(**inputs, use_cache=True, logits_to_keep=1)  # noqa: E731
        checks = check(model, inputs, ratios[-1], args.layer) if not flash else {}
        samples = {name: [] for name, *_ in todo}
        limits = {"unmodified": 1.0}
        with torch.no_grad():
            t0 = time.perf_counter()
            while time.perf_counter() - t0 < 3:  # clocks up
                call()
            failed = {}
            for rep in range(args.warmup + args.reps):
                for name, kwargs, mode, chunk in todo:
                    if name in failed:
                        continue
                    if kwargs is None:
                        timing = _timed(call, cuda)
                    else:
                        try:
                            with _run_with(model, kwargs, mode, chunk, name) as h:
                                timing = _timed(call, cuda)
                                if rep == 0:
                                    limits[name] = flops_speedup(text_config(model), h.trace)
                        except Exception as err:  # a kernel variant this build does not take: recorded, skipped
                            failed[name] = f"{type(err).__name__}: {err}"[:300]
                            print(f"{name}: {failed[name]}", flush=True)
                            continue
                    if rep >= args.warmup:
                        samples[name].append(timing)
        ka.MODE, ka.CHUNK, frozen_hidden.SHARE = "auto", default_chunk, True
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
        entry = dict(tokens=T, checks=checks, rows=rows)
        if str(T) in args.profile.split(",") and cuda:
            keep = dict(method="dash", scope="all", ratio=ratios[-1], layer=args.layer, kv="keep")
            for mode in (["never"] if not flash else []) + ["always"]:
                entry[f"profile_{mode}"] = table = profile(model, call, keep, mode, default_chunk)
                print(f"\nkernels of keep {ratios[-1]} ({mode}), {T} tokens:\n{table}", flush=True)
            ka.CHUNK = default_chunk
        results.append(entry)
    name = f"keep_{args.model}_{args.attn}{args.tag}.json"
    with open(os.path.join(args.out, name), "w") as f:
        json.dump(dict(info=info, results=results), f, indent=1)


if __name__ == "__main__":
    main()
