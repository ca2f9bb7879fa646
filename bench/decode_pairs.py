"""One decode step, with and without dashvl, timed step by step in alternation: the paired measure of the
decode overhead that round-robin whole answers cannot give on a drifting host.

``gpu_generate`` times whole ``generate()`` calls round-robin; on the shared hosts here the unmodified model's
own step moves by ±8% between two of its rounds, so a 2% target cannot be read from it. This script builds one
model and, for each setting, a *twin* that shares its weights (``copy.deepcopy`` with the parameters and
buffers in the memo: no extra memory), compresses each twin with its setting, prefills each on its own
DynamicCache exactly as generate() does, then decodes all of them **one step each in turn** (the order rotated
every round): step k of every setting runs within a few tens of ms of step k of the unmodified model, so the
host's drift cancels in the per-round ratio. Each step is the call generate() makes (the inputs from
``prepare_inputs_for_generation``), then its greedy token and the host read generate()'s stopping check makes.

Reported per setting: the median step time, and the median over rounds of (unmodified step / this step) with
its 10th-90th percentile band. ``unmodified`` is timed twice (the second is a plain twin) as the noise floor.

    python -m bench.decode_pairs --model qwen2-vl-7b --tokens 1088,16448 --batch 1,8 --steps 200
    python -m bench.decode_pairs --model qwen2-vl-mid --device cpu --threads 2 --tokens 1024 --batch 1
"""
from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import statistics
import time

import torch
from tqdm import tqdm

from bench.common import model_args, setup
from bench.gpu_generate import baseline_settings, install, label, make_inputs

DEFAULT_SETTINGS = "unmodified;unmodified;ratio=0;ratio=0.75,layer=2;ratio=0.75,layer=2,kv=keep"


def twin(model):
    """A second model object on the same parameter and buffer tensors (its own hooks and per-call state)."""
    memo = {id(t): t for t in list(model.parameters()) + list(model.buffers())}
    return copy.deepcopy(model, memo)


class Decoder:
    """One setting's model, cache and tokens: ``prefill()`` once, then ``step()`` one greedy token at a time."""

    def __init__(self, model, inputs: dict, setting: dict | None):
        self.model = model
        self.handle = install(model, setting)
        self.ids = inputs["input_ids"]
        self.kwargs = {k: v for k, v in inputs.items() if k != "input_ids"}

    def _call(self, first: bool):
        """One model call as generate()'s loop makes it (its own input preparation and kwargs update)."""
        model = self.model
        if first:
            from transformers import DynamicCache
            self.kwargs.update(use_cache=True, cache=DynamicCache(config=model.config), logits_to_keep=1)
        step_inputs = model.prepare_inputs_for_generation(self.ids, next_sequence_length=None if first else 1,
                                                          is_first_iteration=first, **self.kwargs)
        out = model(**step_inputs, return_dict=True)
        self.kwargs = model._update_model_kwargs_for_generation(out, self.kwargs, is_encoder_decoder=False)
        token = out.logits[:, -1].argmax(-1, keepdim=True)
        self.ids = torch.cat([self.ids, token], dim=1)
        return bool((token == -1).any())  # the host read of a stopping check

    def prefill(self):
        self._call(first=True)

    def step(self):
        self._call(first=False)


class GCClock:
    """Milliseconds the garbage collector ran during each timed step (gc.callbacks), so that a collection
    landing in one setting's step can be told apart from that setting's own cost."""

    def __init__(self):
        self.ms, self._t0 = 0.0, None
        gc.callbacks.append(self)

    def __call__(self, phase, info):
        if phase == "start":
            self._t0 = time.perf_counter()
        elif self._t0 is not None:
            self.ms += (time.perf_counter() - self._t0) * 1000

    def remove(self):
        gc.callbacks.remove(self)


def profile_steps(decoders, labels, n: int, cuda: bool) -> dict:
    """torch.profiler over ``n`` more steps of each decoder: the top host ops and device kernels of each."""
    from torch.profiler import ProfilerActivity, profile
    out = {}
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    for d, name in zip(decoders, labels):
        with profile(activities=acts) as prof:
            for _ in range(n):
                d.step()
            if cuda:
                torch.cuda.synchronize()
        key = "self_cuda_time_total" if cuda else "self_cpu_time_total"
        out[name] = dict(cpu=prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12),
                         device=prof.key_averages().table(sort_by=key, row_limit=8))
        print(f"\n### profile of {n} steps: {name}\n{out[name]['cpu']}\n{out[name]['device']}", flush=True)
    return out


def time_pairs(model, inputs, settings, steps: int, warmup: int, cuda: bool, profile: int = 0) -> list[dict]:
    models = [model] + [twin(model) for _ in settings[1:]]
    decoders = [Decoder(m, inputs, s) for m, s in zip(models, settings)]
    times = [[] for _ in settings]
    gc_ms = [0.0 for _ in settings]
    clock = GCClock()
    with torch.no_grad():
        for d in decoders:
            d.prefill()
        order = list(range(len(decoders)))
        for r in tqdm(range(warmup + steps), desc="paired decode steps", leave=False):
            order = order[1:] + order[:1]  # rotate: no setting always follows the same one
            for i in order:
                if cuda:
                    torch.cuda.synchronize()
                before = clock.ms
                t0 = time.perf_counter()
                decoders[i].step()
                if cuda:
                    torch.cuda.synchronize()
                if r >= warmup:
                    times[i].append((time.perf_counter() - t0) * 1000)
                    gc_ms[i] += clock.ms - before
        clock.remove()
        if profile:
            profile_steps(decoders, [label(s) for s in settings], profile, cuda)
    for d in decoders:
        if d.handle is not None:
            d.handle.remove()
    rows = []
    for i, s in enumerate(settings):
        ratios = sorted(a / b for a, b in zip(times[0], times[i]))
        q = lambda p: ratios[min(len(ratios) - 1, int(p * len(ratios)))]
        rows.append(dict(setting=label(s), step_ms=statistics.median(times[i]),
                         speedup=statistics.median(ratios), p10=q(0.1), p90=q(0.9), steps=len(times[i]),
                         gc_ms_per_step=gc_ms[i] / max(1, len(times[i])), series_ms=times[i]))
    return rows


def markdown(rows) -> str:
    out = ["| setting | step (median) | speedup (median of paired ratios) | p10–p90 | GC ms/step |",
           "|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['setting']} | {r['step_ms']:.2f} ms | {r['speedup']:.3f}× | "
                   f"{r['p10']:.3f}–{r['p90']:.3f} | {r['gc_ms_per_step']:.2f} |")
    return "\n".join(out)


def main(argv=None, **defaults):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    model_args(p)
    p.add_argument("--tokens", default="1088,16448")
    p.add_argument("--batch", default="1,8")
    p.add_argument("--steps", type=int, default=200, help="timed steps per setting (after --warmup)")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--settings", default=DEFAULT_SETTINGS)
    p.add_argument("--no-cudnn", action="store_true", help="SDPA without its cuDNN backend, for every setting alike")
    p.add_argument("--profile", type=int, default=0, help="then profile this many more steps of each setting")
    p.add_argument("--out", default=os.environ.get("OUT", "/tmp"))
    p.add_argument("--tag", default="")
    p.set_defaults(**defaults)
    args = p.parse_args(argv)
    settings = baseline_settings(p, args.settings)
    if args.no_cudnn:
        torch.backends.cuda.enable_cudnn_sdp(False)
    model, cuda, info = setup(args, "bench.decode_pairs", argv)
    model.generation_config.eos_token_id = None
    results = []
    for T in [int(t) for t in args.tokens.split(",")]:
        for B in [int(b) for b in args.batch.split(",")]:
            torch.manual_seed(T + B)
            inputs = make_inputs(model, args.mode, T, B, args.device)
            rows = time_pairs(model, inputs, settings, args.steps, args.warmup, cuda, args.profile)
            n = inputs["input_ids"].shape[1]
            results.append(dict(tokens=n, batch=B, rows=rows))
            print(f"\n## {args.model} {args.mode}, {n} tokens, batch {B}, dynamic cache, {args.attn}: one decode "
                  f"step, paired\n\n{markdown(rows)}", flush=True)
            if cuda:
                torch.cuda.empty_cache()
    name = f"decode_pairs_{args.model}_{args.mode}_{args.device.split(':')[0]}_{args.attn}{args.tag}.json"
    with open(os.path.join(args.out, name), "w") as f:  # the summary; every step's time (series_ms) in raw/
        json.dump(dict(info=info, results=[dict(r, rows=[{k: v for k, v in row.items() if k != "series_ms"}
                                                        for row in r["rows"]]) for r in results]), f, indent=1)
    os.makedirs(os.path.join(args.out, "raw"), exist_ok=True)
    with open(os.path.join(args.out, "raw", name), "w") as f:
        json.dump(dict(info=info, results=results), f)
    return results


if __name__ == "__main__":
    main()
