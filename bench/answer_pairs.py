"""Whole ``generate()`` answers with and without dashvl, timed answer by answer in alternation: the paired
measure of what a user waits for, on a host whose speed drifts.

``gpu_generate`` times settings in blocks (every length of one setting, then the next), and on the shared H200
hosts the unmodified model timed twice that way differed by up to 35% per whole answer, as much as any setting
differed from it. Here every setting gets a *twin* of the model that shares its weights (``decode_pairs.twin``),
compressed once, and each round runs **one answer of each setting in turn** (order rotated every round; a
``gc.collect()`` before each, untimed), so the k-th answers of all settings run within seconds of each other and
the drift cancels in the per-round ratio. Each answer is ``generate(max_new_tokens=N, min_new_tokens=N)``,
greedy, preceded by ``generate(max_new_tokens=1)`` (the time to first token), both timed with the device's work.

Reported per setting: the median whole answer and first token, and the median over rounds of (unmodified /
this setting) with its 10th-90th percentile band. ``unmodified`` listed twice is the noise floor (a plain twin).

    python -m bench.answer_pairs --model qwen2-vl-7b --mode e2e --tokens 1024 --new 64 --rounds 15
    python -m bench.answer_pairs --model qwen2-vl-7b --cells "e2e:1024:64,llm:16448:33,llm:1088:33:8"  (one model)
    python -m bench.answer_pairs --model qwen2-vl-7b --mode llm --tokens 16448 --new 33 --cache static
    python -m bench.answer_pairs --model qwen2-vl-mid --device cpu --threads 2 --tokens 1024 --new 16 --rounds 5
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import statistics

import torch
from tqdm import tqdm

from bench.common import model_args, setup
from bench.decode_pairs import twin
from bench.gpu_generate import _clock, baseline_settings, install, label, make_inputs

DEFAULT_SETTINGS = "unmodified;unmodified;ratio=0;ratio=0.75,layer=2"


def _band(ratios: list[float]) -> dict:
    ratios = sorted(ratios)
    q = lambda p: ratios[min(len(ratios) - 1, int(p * len(ratios)))]
    return dict(speedup=statistics.median(ratios), p10=q(0.1), p90=q(0.9))


def time_answers(model, inputs, settings, new: int, cache: str, rounds: int, warmup: int, cuda: bool) -> list[dict]:
    extra = {"cache_implementation": "static"} if cache == "static" else {}
    models = [model] + [twin(model) for _ in settings[1:]]  # twins before any generate(): own compiled steps
    handles = [install(m, s) for m, s in zip(models, settings)]
    first = [[] for _ in settings]
    whole = [[] for _ in settings]
    order = list(range(len(settings)))
    try:
        with torch.no_grad():
            for r in tqdm(range(warmup + rounds), desc=f"paired answers ({cache}, {new} new)", leave=False):
                order = order[1:] + order[:1]  # no setting always follows the same one
                for i in order:
                    gen = lambda n: models[i].generate(**inputs, max_new_tokens=n, min_new_tokens=n,
                                                       do_sample=False, **extra)
                    gc.collect()
                    t1 = _clock(lambda: gen(1), cuda)
                    tn = _clock(lambda: gen(new), cuda)
                    if r >= warmup:
                        first[i].append(t1)
                        whole[i].append(tn)
    finally:
        for h in handles:
            if h is not None:
                h.remove()
    rows = []
    for i, s in enumerate(settings):
        w = _band([a / b for a, b in zip(whole[0], whole[i])])
        f = _band([a / b for a, b in zip(first[0], first[i])])
        rows.append(dict(setting=label(s), whole_ms=statistics.median(whole[i]), ttft_ms=statistics.median(first[i]),
                         **w, ttft_speedup=f["speedup"], rounds=len(whole[i]),
                         series_whole_ms=whole[i], series_ttft_ms=first[i]))
    return rows


def markdown(rows, new: int) -> str:
    out = [f"| setting | first token | whole {new} (median) | whole: speedup (median of paired ratios) | p10–p90 |",
           "|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['setting']} | {r['ttft_ms']:.1f} ms ({r['ttft_speedup']:.2f}×) | {r['whole_ms']:.1f} ms | "
                   f"{r['speedup']:.3f}× | {r['p10']:.3f}–{r['p90']:.3f} |")
    return "\n".join(out)


def main(argv=None, **defaults):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    model_args(p)
    p.add_argument("--tokens", default="1024")
    p.add_argument("--batch", default="1")
    p.add_argument("--new", type=int, default=64, help="answer length (new tokens)")
    p.add_argument("--cells", default="", help="MODE:TOKENS:NEW[:BATCH],... (instead of --mode/--tokens/--new): "
                   "several prompt kinds on one built model")
    p.add_argument("--cache", default="dynamic", help="dynamic, static, or both comma-separated")
    p.add_argument("--settings", default=DEFAULT_SETTINGS)
    p.add_argument("--rounds", type=int, default=15, help="timed rounds (after --warmup)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--out", default=os.environ.get("OUT", "/tmp"))
    p.add_argument("--tag", default="")
    p.set_defaults(**defaults)
    args = p.parse_args(argv)
    settings = baseline_settings(p, args.settings)
    batches = [int(b) for b in args.batch.split(",")]
    try:  # MODE:TOKENS:NEW[:BATCH]; without BATCH, each of --batch
        cells = [(m, int(t), int(n), [int(b[0])] if b else batches) for m, t, n, *b in
                 (c.split(":") for c in args.cells.split(","))] if args.cells else \
            [(args.mode, int(t), args.new, batches) for t in args.tokens.split(",")]
    except ValueError:
        p.error(f"--cells is MODE:TOKENS:NEW[:BATCH],... (MODE llm or e2e); got {args.cells!r}")
    if any(m not in ("llm", "e2e") for m, *_ in cells) or min(n for _, _, n, _ in cells) < 2:
        p.error("each cell's MODE is llm or e2e and its NEW (answer length) >= 2")
    args.mode = "e2e" if any(m == "e2e" for m, *_ in cells) else "llm"  # the real vision tower where a cell needs it
    model, cuda, info = setup(args, "bench.answer_pairs", argv)
    torch._dynamo.config.recompile_limit = torch._dynamo.config.accumulated_recompile_limit = 256
    model.generation_config.eos_token_id = None  # random weights: never stop early
    name = f"answer_pairs_{args.model}_{args.mode}_{args.device.split(':')[0]}_{args.attn}{args.tag}.json"
    results = []
    for mode, T, new, cell_batches in cells:
        for B in cell_batches:
            torch.manual_seed(T + B)
            inputs = make_inputs(model, mode, T, B, args.device)
            for cache in args.cache.split(","):
                rows = time_answers(model, inputs, settings, new, cache, args.rounds, args.warmup, cuda)
                n = inputs["input_ids"].shape[1]
                results.append(dict(mode=mode, tokens=n, batch=B, cache=cache, new=new, rows=rows))
                print(f"\n## {args.model} {mode}, {n} tokens, batch {B}, {cache} cache, {args.attn}: whole "
                      f"{new}-token answers, paired\n\n{markdown(rows, new)}", flush=True)
                # after every cell, so that a run cut by a time limit keeps what it measured
                with open(os.path.join(args.out, name), "w") as f:
                    json.dump(dict(info=info, results=[dict(r, rows=[{k: v for k, v in row.items()
                                                                      if not k.startswith("series")}
                                                                     for row in r["rows"]]) for r in results]),
                              f, indent=1)
                os.makedirs(os.path.join(args.out, "raw"), exist_ok=True)
                with open(os.path.join(args.out, "raw", name), "w") as f:
                    json.dump(dict(info=info, results=results), f)
                if cuda:
                    torch.cuda.empty_cache()
    return results


if __name__ == "__main__":
    main()
