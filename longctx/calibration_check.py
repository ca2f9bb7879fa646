"""Does ``dashvl.calibrate`` pick what the text accuracy table would? Calibrate on held-out suite prompts.

    python -m longctx.calibration_check --model smollm2-135m-instruct --lengths 1024,2048,4096,8192 --per-length 4 \\
        --out longctx/results/raw/calibration.json

The prompts are the suite's tasks at sample indices from 1000 on (the table uses 0..n-1), one task per prompt in
turn. The candidates are the table's own rows (``longctx.evaluate.table_settings``) that dashvl can pick from: the
paper's Δ at 2, 0.25·L and 0.4·L and dash-avg and dash-snap at 0.4·L, both kv modes, every ratio. For each ``--max-loss`` the
JSON records the pick; ``python -m longctx.report --calibration`` sets it against the table.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import dashvl

from .evaluate import _machine, _versions, table_settings
from .tasks import TASKS, build_sample

__all__ = ["candidates", "main"]

HELD_OUT = 1000


def candidates() -> list[dashvl.DashConfig]:
    rows = [s for s in table_settings() if s is not None and s["method"] in ("dash", "dash-avg", "dash-snap")]
    return [dashvl.DashConfig(**s) for s in rows]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m longctx.calibration_check", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--lengths", default="1024,2048")
    p.add_argument("--per-length", type=int, default=4, help="prompts per length")
    p.add_argument("--max-loss", default="0.02,0.05,0.1,0.2,0.5", help="comma-separated budgets (nats per token)")
    p.add_argument("--new-tokens", type=int, default=16)
    p.add_argument("--dtype", default=None, choices=("float32", "bfloat16"))
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    model, tok = dashvl.load_model(a.model, dtype=getattr(torch, a.dtype) if a.dtype else None)
    device = next(model.parameters()).device
    names = list(TASKS)
    samples = []
    for L in (int(x) for x in a.lengths.split(",")):
        for i in range(a.per_length):
            s = build_sample(names[(i + L // 1024) % len(names)], L, HELD_OUT + i, tok)
            samples.append(dict(tok(s.prompt, add_special_tokens=s.add_special_tokens, return_tensors="pt")))
    start = time.time()
    budgets = [float(x) for x in a.max_loss.split(",")]
    first = dashvl.calibrate(model, samples, max_loss=budgets[0], candidates=candidates(), new_tokens=a.new_tokens)
    picks = {str(b): first.pick(b) for b in budgets}  # the measured rows do not depend on the budget
    record = {"model": a.model, "machine": _machine(device), "versions": _versions(), "lengths": a.lengths,
              "per_length": a.per_length, "new_tokens": a.new_tokens, "reference_nll": first.reference_nll,
              "rows": first.rows, "picks": picks, "seconds": round(time.time() - start, 1),
              "command": "python -m longctx.calibration_check " + " ".join(argv or __import__("sys").argv[1:])}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(record, indent=1) + "\n")
    print(first.markdown())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
