"""What a user waits for in ``generate()``: time to first token, per-token decode and the whole answer.

One process builds the model (random bf16 weights at a real model's shapes: speed does not depend on their
values), then for each prompt length, batch size and cache kind times every setting round-robin (so that the
host's drift hits all alike), greedy, with every answer forced to its full length (``min_new_tokens``):

- ``ttft``: ``generate(max_new_tokens=1)``, the prefill and one token;
- ``whole_N``: ``generate(max_new_tokens=N)`` for each N in ``--new``;
- ``per_token``: ``(whole_N - ttft) / (N - 1)`` for the largest N: one decode step;
- ``step``: the median interval between the starts of consecutive decode steps of the largest N's calls
  (every step of every repetition is a sample, so it is far less noisy than ``per_token``, a difference).

Each figure is the median of ``--reps`` after ``--warmup`` rounds, on CUDA from CUDA events around the call
(host and device together, as a user sees it). Settings that dashvl refuses are recorded with the refusal
instead of a time. Ratios are against the unmodified model with the same cache. With ``--cache static``
generate() compiles the decode step (transformers' default CompileConfig: inductor, CUDA graphs); the warm-up
round pays the compilations, and ``step`` is not measured there (a timing hook would be compiled into the
step), only ``per_token``.

    python -m bench.gpu_generate --model qwen2-vl-7b --mode llm --tokens 1088,16448 --batch 1,8
    python -m bench.gpu_generate --model qwen2-vl-7b --mode e2e --tokens 576,1024,4096 --new 32,64
    python -m bench.cpu_generate          # the CPU variant (make bench-cpu-generate)
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch

import dashvl
from bench.common import model_args, setup, visual_inputs

DEFAULT_SETTINGS = "unmodified;ratio=0;ratio=0.75,layer=2;ratio=0.75,layer=2,kv=keep;ratio=0.75,layer=2,cuda_graph=False"


def parse_settings(text: str) -> list[dict | None]:
    """``"unmodified;ratio=0.75,layer=2,kv=keep"`` -> ``[None, {"ratio": 0.75, "layer": 2, "kv": "keep"}]``."""
    out = []
    for part in filter(None, (p.strip() for p in text.split(";"))):
        if part == "unmodified":
            out.append(None)
            continue
        s = {}
        for kv in part.split(","):
            key, _, value = kv.partition("=")
            if not value:
                raise ValueError(f"a setting is key=value,...; got {kv!r} in {part!r}")
            s[key.strip()] = _value(value.strip())
        dashvl.DashConfig(**s)  # the library's own checks and messages
        out.append(s)
    return out


def install(model, setting: dict | None):
    """``compress`` with ``setting`` over the paper's ``DashConfig`` defaults (what a setting string names), not
    over ``compress``'s per-model defaults: "ratio=0.75,layer=2" is DASH's Δ, scope all, on any model."""
    return dashvl.compress(model, dashvl.DashConfig(**setting)) if setting is not None else None


def baseline_settings(parser, text: str) -> list[dict | None]:
    """``parse_settings(text)``, refused through ``parser`` unless "unmodified" comes first (ratios are against it)."""
    settings = parse_settings(text)
    if settings[0] is not None:
        parser.error("--settings must start with 'unmodified' (the ratios are against it)")
    return settings


def _value(text: str):
    if text in ("True", "False", "None"):
        return {"True": True, "False": False, "None": None}[text]
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            return text


def label(setting: dict | None) -> str:
    return "unmodified" if setting is None else ",".join(f"{k}={v}" for k, v in setting.items())


def _clock(fn, cuda: bool) -> float:
    """Wall ms of one call, the device's work included."""
    if cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    if cuda:
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) * 1000


def make_inputs(model, mode: str, tokens: int, batch: int, device) -> dict:
    if mode == "llm":
        vocab = model.config.get_text_config().vocab_size
        ids = torch.randint(10, min(vocab, 150000) - 10, (batch, tokens), device=device)
        return dict(input_ids=ids, attention_mask=torch.ones_like(ids))
    one = visual_inputs(model, tokens, device)
    if batch == 1:
        return dict(one, attention_mask=torch.ones_like(one["input_ids"]))
    out = {k: torch.cat([v] * batch) for k, v in one.items()}
    return dict(out, attention_mask=torch.ones_like(out["input_ids"]))


class StepClock:
    """Host time at the start of each model call (a pre-hook that runs before any other), from which the
    intervals between consecutive decode steps. generate() reads its stopping criteria every step, which
    waits for the device, so on CUDA too an interval is one whole step."""

    def __init__(self, model):
        self.starts: list[float] = []
        self._hook = model.register_forward_pre_hook(lambda m, a: self.starts.append(time.perf_counter()),
                                                     prepend=True)

    def steps_ms(self) -> list[float]:
        """Intervals between decode-step starts (the first call is the prefill): N - 2 per answer of N."""
        return [(b - a) * 1000 for a, b in zip(self.starts[1:], self.starts[2:])]

    def remove(self) -> None:
        self._hook.remove()


def time_generate(model, inputs, settings, new_tokens, cache: str, reps: int, warmup: int, cuda: bool) -> list[dict]:
    """One row per setting: median ms of ttft and each whole answer, per-token ms, or the refusal."""
    extra = {"cache_implementation": "static"} if cache == "static" else {}

    kept = {}  # setting -> the bytes of its last whole answer's cache (a row's cache_mb)
    last = {}  # the cache of the call just timed, sized after its clock stops (then let go)

    def call(n):
        def run():
            last["cache"] = model.generate(**inputs, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                                           return_dict_in_generate=True, **extra).past_key_values
        return run

    lengths = [1] + list(new_tokens)
    samples = {i: {n: [] for n in lengths} for i in range(len(settings))}
    steps = {i: [] for i in range(len(settings))}
    refused = {}
    with torch.no_grad():
        for rep in range(warmup + reps):
            for i, s in enumerate(settings):
                if i in refused:
                    continue
                try:
                    handle = install(model, s)
                except ValueError as err:
                    refused[i] = str(err)
                    continue
                try:
                    for n in lengths:
                        # a pre-hook would be traced into the static cache's compiled step: per_token only there
                        clock = StepClock(model) if n == max(lengths) and cache != "static" else None
                        try:
                            ms = _clock(call(n), cuda)
                        finally:
                            if clock is not None:
                                clock.remove()
                        cache_of_call = last.pop("cache", None)
                        if n == max(lengths):
                            kept[i] = cache_bytes(cache_of_call)
                        if rep >= warmup:
                            samples[i][n].append(ms)
                            if clock is not None:
                                steps[i] += clock.steps_ms()
                except ValueError as err:  # refused at call time (a generation setting)
                    refused[i] = str(err)
                finally:
                    if handle is not None:
                        handle.remove()
    rows = []
    for i, s in enumerate(settings):
        row = dict(setting=label(s))
        if i in refused:
            row["refused"] = refused[i]
        else:
            med = {n: statistics.median(samples[i][n]) for n in lengths}
            row.update(ttft=med[1], **{f"whole_{n}": med[n] for n in new_tokens},
                       per_token=(med[max(new_tokens)] - med[1]) / (max(new_tokens) - 1),
                       step=statistics.median(steps[i]) if steps[i] else float("nan"),
                       cache_mb=kept.get(i, 0) / 2 ** 20)
        rows.append(row)
    base = rows[0]
    for row in rows[1:]:
        if "refused" not in row and "refused" not in base:
            row["ttft_speedup"] = base["ttft"] / row["ttft"]
            row["per_token_speedup"] = base["per_token"] / row["per_token"]
            row["step_speedup"] = base["step"] / row["step"]
            for n in new_tokens:
                row[f"whole_{n}_speedup"] = base[f"whole_{n}"] / row[f"whole_{n}"]
    return rows


def cache_bytes(cache) -> int:
    """Bytes of a generate() cache's keys and values (a kv="drop" static cache's halted layers are compact)."""
    layers = getattr(cache, "layers", None) or ()
    return sum(t.numel() * t.element_size() for layer in layers for t in (getattr(layer, "keys", None),
                                                                          getattr(layer, "values", None))
               if isinstance(t, torch.Tensor))


def markdown(rows, new_tokens) -> str:
    cols = ["setting", "ttft", "per_token", "step"] + [f"whole_{n}" for n in new_tokens] + ["cache_mb"]
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        if "refused" in r:
            out.append(f"| {r['setting']} | refused: {r['refused'][:90]} |" + " |" * (len(cols) - 2))
            continue
        cells = [r["setting"]]
        for c in cols[1:]:
            speed = r.get(f"{c}_speedup" if c != "ttft" else "ttft_speedup")
            cells.append(f"{r[c]:.1f}" + (f" ({speed:.2f}×)" if speed else ""))
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def main(argv=None, **defaults):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    model_args(p)
    p.add_argument("--tokens", default="1088,4160,16448")
    p.add_argument("--batch", default="1,8")
    p.add_argument("--new", default="32,128", help="answer lengths (new tokens) to time whole")
    p.add_argument("--cache", default="dynamic,static")
    p.add_argument("--settings", default=DEFAULT_SETTINGS, help="';'-separated compress() settings "
                   "(key=value,...), 'unmodified' first")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--out", default=os.environ.get("OUT", "/tmp"))
    p.add_argument("--tag", default="")
    p.set_defaults(**defaults)
    args = p.parse_args(argv)
    settings = baseline_settings(p, args.settings)
    new_tokens = [int(n) for n in args.new.split(",")]
    if min(new_tokens) < 2:
        p.error("--new: each answer length must be >= 2 (the per-token time is measured between 1 and N)")
    model, cuda, info = setup(args, "bench.gpu_generate", argv)
    # one compiled decode step per prompt shape and answer length, for the stock code and dashvl's kv="drop" one
    torch._dynamo.config.recompile_limit = torch._dynamo.config.accumulated_recompile_limit = 256
    model.generation_config.eos_token_id = None  # random weights: never stop early
    results = []
    for T in [int(t) for t in args.tokens.split(",")]:
        for B in [int(b) for b in args.batch.split(",")]:
            torch.manual_seed(T + B)
            inputs = make_inputs(model, args.mode, T, B, args.device)
            for cache in args.cache.split(","):
                rows = time_generate(model, inputs, settings, new_tokens, cache, args.reps, args.warmup, cuda)
                n = inputs["input_ids"].shape[1]
                results.append(dict(tokens=n, batch=B, cache=cache, rows=rows))
                print(f"\n## {args.model} {args.mode}, {n} tokens, batch {B}, {cache} cache, {args.attn} "
                      f"(ms; × = speedup over unmodified)\n\n{markdown(rows, new_tokens)}", flush=True)
                # written after every cell, so that a run cut by a time limit keeps what it measured
                name = f"generate_{args.model}_{args.mode}_{args.device.split(':')[0]}_{args.attn}{args.tag}.json"
                with open(os.path.join(args.out, name), "w") as f:
                    json.dump(dict(info=info, results=results), f, indent=1)
    return results


if __name__ == "__main__":
    main()
