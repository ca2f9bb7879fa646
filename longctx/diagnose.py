"""Which tokens a halting score halts first on a real model: the rank of each kind of prompt token.

    python -m longctx.diagnose --model smollm2-135m-instruct --tasks niah_single_1,niah_single_2,qa_1 \\
        --length 1024 --n 4 --layers 2,7,12,21 --out longctx/results/diagnose_smollm2.json

One unmodified forward per prompt records, at every decoder layer l, the layer's input x_l (the residual
stream), its attention's update U_l and its output. Every score below ranks the prompt's tokens at a layer;
the table gives, per kind of token, the median percentile of its tokens (0 = halts first, 1 = halts last).

Kinds: ``sink`` (the first 4 tokens), ``instruction`` (the rest before the context), ``needle`` (the tokens of
the gold answer inside the context), ``filler`` (the rest of the context), ``question`` (everything after it:
the question, the chat turn's end and the answer prefix).
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
from pathlib import Path

import torch

from dashvl import policy

from .tasks import TASKS, _seed, build_sample

__all__ = ["KINDS", "SCORES", "token_kinds_of", "record_layers", "percentiles", "main"]

KINDS = ("sink", "instruction", "needle", "filler", "question")
SINKS = 4


def _norm(x):
    return torch.linalg.vector_norm(x.float(), dim=-1)


def _scaled_delta(U):  # one layer's Δ over its median (dash-avg's own scaling), one prompt
    return policy.scaled_delta(U[None], torch.ones(1, U.shape[0], dtype=torch.bool, device=U.device))[0]


# name -> (layer l, record) -> float [T]; lower halts first. The record holds, per layer: x (input),
# U (attention update), y (output), each [T, d].
SCORES = {
    "dash Δ=||U||": lambda l, r: _norm(r["U"][l]),
    "Δ/||x|| (relative)": lambda l, r: _norm(r["U"][l]) / _norm(r["x"][l]),
    "||y-x|| (block)": lambda l, r: _norm(r["y"][l] - r["x"][l]),
    "||y-x||/||x|| (block, relative)": lambda l, r: _norm(r["y"][l] - r["x"][l]) / _norm(r["x"][l]),
    "mean Δ over layers 0..l": lambda l, r: torch.stack([_scaled_delta(r["U"][k]) for k in range(l + 1)]).mean(0),
    "-Δ (reversed)": lambda l, r: -_norm(r["U"][l]),
}


def token_kinds_of(sample, tokenizer) -> list[str]:
    """The kind (``KINDS``) of each of the sample's prompt tokens, from character spans."""
    task = TASKS[sample.task]
    parts = task.generate(random.Random(_seed(sample.task, sample.length, sample.index)), sample.n,
                          **task.options_for(sample.length))
    text = sample.prompt
    c0 = text.index(parts.context)
    c1 = c0 + len(parts.context)
    needles = []
    for answer in parts.answers:
        start = parts.context.find(answer)
        while start >= 0:
            needles.append((c0 + start, c0 + start + len(answer)))
            start = parts.context.find(answer, start + 1)
    enc = tokenizer(text, add_special_tokens=sample.add_special_tokens, return_offsets_mapping=True)
    kinds = []
    for i, (a, b) in enumerate(enc["offset_mapping"]):
        if i < SINKS:
            kinds.append("sink")
        elif b <= c0:
            kinds.append("instruction")
        elif a >= c1:
            kinds.append("question")
        elif any(a < e and b > s for s, e in needles):
            kinds.append("needle")
        else:
            kinds.append("filler")
    return kinds


@torch.no_grad()
def record_layers(model, ids: torch.Tensor) -> dict:
    """``{"x": [...], "U": [...], "y": [...]}``: per decoder layer, [T, d] of one prompt (batch 1)."""
    rec = {"x": [], "U": [], "y": []}
    hooks = []
    for layer in model.model.layers:
        hooks.append(layer.register_forward_pre_hook(
            lambda m, a, k: rec["x"].append((a[0] if a else k["hidden_states"])[0]), with_kwargs=True))
        hooks.append(layer.self_attn.register_forward_hook(
            lambda m, a, out: rec["U"].append((out[0] if isinstance(out, tuple) else out)[0])))
        hooks.append(layer.register_forward_hook(
            lambda m, a, out: rec["y"].append((out[0] if isinstance(out, tuple) else out)[0])))
    try:
        model(input_ids=ids, use_cache=False)
    finally:
        for h in hooks:
            h.remove()
    return rec


def percentiles(scores: torch.Tensor) -> torch.Tensor:
    """Each token's rank among the prompt's tokens as a fraction in [0, 1] (0 = lowest score): ``policy.row_ranks``."""
    return policy.row_ranks(scores[None], torch.ones(1, scores.shape[0], dtype=torch.bool, device=scores.device))[0]


def diagnose(model, tokenizer, task_names, length: int, n: int, layers) -> dict:
    """``{score: {layer: {kind: median percentile}}}`` over the samples, and the samples' kind counts."""
    from tqdm.auto import tqdm

    pooled = {s: {l: {k: [] for k in KINDS} for l in layers} for s in SCORES}
    counts = {k: 0 for k in KINDS}
    samples = [build_sample(t, length, i, tokenizer) for t in task_names for i in range(n)]
    for sample in tqdm(samples, desc="diagnose", unit="prompt"):
        kinds = token_kinds_of(sample, tokenizer)
        ids = tokenizer(sample.prompt, add_special_tokens=sample.add_special_tokens, return_tensors="pt")["input_ids"]
        rec = record_layers(model, ids)
        for k in kinds:
            counts[k] += 1
        for name, fn in SCORES.items():
            for l in layers:
                pct = percentiles(fn(l, rec))
                for kind in KINDS:
                    pooled[name][l][kind] += [float(p) for p, k in zip(pct, kinds) if k == kind]
    table = {name: {l: {k: (statistics.median(v) if v else None) for k, v in per.items()} for l, per in by.items()}
             for name, by in pooled.items()}
    return {"medians": table, "tokens_per_kind": counts, "samples": len(samples)}


def markdown(result: dict, layers) -> str:
    lines = ["| score | layer | " + " | ".join(KINDS) + " |", "|---|---|" + "---|" * len(KINDS)]
    for name, by in result["medians"].items():
        for l in layers:
            row = by[l] if l in by else by[str(l)]
            lines.append(f"| {name} | {l} | " + " | ".join("–" if row[k] is None else f"{row[k]:.2f}" for k in KINDS) + " |")
    return "\n".join(lines)


def main(argv=None) -> None:
    import dashvl

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--tasks", default="niah_single_1,niah_single_2,niah_multikey_1,qa_1")
    p.add_argument("--length", type=int, default=1024)
    p.add_argument("--n", type=int, default=3)
    p.add_argument("--layers", default="2,7,12,21")
    p.add_argument("--out", type=Path)
    a = p.parse_args(argv)
    model, tokenizer = dashvl.load_model(a.model)
    layers = [int(x) for x in a.layers.split(",")]
    result = diagnose(model, tokenizer, a.tasks.split(","), a.length, a.n, layers)
    result["command"] = "python -m longctx.diagnose " + " ".join(argv if argv is not None else __import__("sys").argv[1:])
    print(markdown(result, layers))
    print("tokens per kind:", result["tokens_per_kind"])
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
