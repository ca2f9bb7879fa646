"""The text accuracy table: merge ``longctx.evaluate`` shards, then write the tables and the plot.

    python -m longctx.report --shards 'longctx/results/raw/table_*.json' --out longctx/results/smollm2_table

writes ``<out>.json`` (the merged record), ``<out>.md`` (suite score per setting and length, the equal-budget
matrix at 0.4·L, the goal check) and ``<out>.png`` (score against ratio, one line per method). The suite score
of a setting is the mean over tasks and lengths of the per-task scores (each 0-100).
"""
from __future__ import annotations

import argparse
import glob
import json
from pathlib import Path

from dashvl.config import DashConfig

__all__ = ["merge", "suite_score", "markdown", "plot", "main"]


def merge(paths) -> dict:
    """One record from shard records of the same run (same suite, model, tasks, lengths, samples)."""
    records = [json.loads(Path(p).read_text()) for p in sorted(paths)]
    if not records:
        raise ValueError("no shard files matched")
    keys = ("suite_version", "model", "num_layers", "tasks", "lengths", "n_per_task", "dtype")
    first = records[0]
    for r in records[1:]:
        differ = [k for k in keys if r.get(k) != first.get(k)]
        if differ:
            raise ValueError(f"shards of different runs: {differ} differ")
    out = {k: first[k] for k in keys + ("machine", "versions", "attn_implementation", "batch_size")}
    out["commands"] = [r["command"] for r in records]
    out["wall_seconds"] = max(r["wall_seconds"] for r in records)
    out["settings"], out["scores"], out["flops_speedup"], out["seconds"] = [], {}, {}, {}
    for r in records:
        out["settings"] += r["settings"]
        for part in ("scores", "flops_speedup", "seconds"):
            out[part].update(r[part])
    # the table's own order: unmodified first, then as table_settings lists them
    from .evaluate import label, table_settings
    order = {label(s): i for i, s in enumerate(table_settings())}
    out["settings"].sort(key=lambda s: order.get(s["label"], len(order)))
    return out


def suite_score(record: dict, name: str, length: str | None = None) -> float:
    per = record["scores"][name]
    lengths = [length] if length else sorted(per, key=int)
    return sum(per[L]["avg"] for L in lengths) / len(lengths)


def _flops(record, name, length=None) -> float:
    per = record["flops_speedup"][name]
    lengths = [length] if length else sorted(per, key=int)
    return sum(per[L] for L in lengths) / len(lengths)


def _rivals_at(record, layer=0.4):
    """{method label: {ratio: setting label}} for the settings at ``layer``."""
    rows = {}
    for s in record["settings"]:
        spec = s["spec"]
        if spec is None or spec.get("layer") != layer:
            continue
        name = spec["method"] + ("" if spec.get("kv", "drop") == "drop" else " keep")
        rows.setdefault(name, {})[spec["ratio"]] = s["label"]
    return rows


def markdown(record: dict) -> str:
    lengths = sorted(record["scores"]["unmodified"], key=int)
    base = suite_score(record, "unmodified")
    lines = [f"Model `{record['model']}` ({record['dtype']}), suite {record['suite_version']}: "
             f"{len(record['tasks'])} tasks × lengths {', '.join(lengths)} × {record['n_per_task']} samples, greedy. "
             f"Machine: {record['machine'].get('gpu', record['machine']['platform'])}; versions "
             f"{', '.join(f'{k} {v}' for k, v in record['versions'].items())}; {record['wall_seconds']:.0f} s wall.",
             "", "Commands:", ""] + [f"    {c}" for c in record["commands"]]
    at = DashConfig(layer=0.4).resolve_layer(record["num_layers"])
    lines += ["", f"### Equal budgets at 0.4·L (layer {at} of {record['num_layers']}): suite score "
              "(mean over tasks and lengths)", "",
              "Same ratio = the same number of prompt tokens halted. Unmodified: "
              f"**{base:.1f}**. In brackets: the prefill FLOPs limit (mean over lengths).", ""]
    rivals = _rivals_at(record)
    ratios = sorted({r for per in rivals.values() for r in per})
    lines += ["| method | " + " | ".join(f"ρ={r}" for r in ratios) + " |", "|---|" + "---|" * len(ratios)]
    for name, per in rivals.items():
        cells = [f"{suite_score(record, per[r]):.1f} ({_flops(record, per[r]):.2f}×)" if r in per else "–"
                 for r in ratios]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "### Every setting: suite score per length", "",
              "| setting | " + " | ".join(f"{L}" for L in lengths) + " | all | share of unmodified | FLOPs limit |",
              "|---|" + "---|" * (len(lengths) + 3)]
    for s in record["settings"]:
        name = s["label"]
        cells = [f"{suite_score(record, name, L):.1f}" for L in lengths]
        total = suite_score(record, name)
        share = f"{100 * total / base:.0f}%" if base else "–"
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {total:.1f} | {share} | {_flops(record, name):.2f}× |")
    lines += ["", "### Per task (all lengths)", "", "| setting | " + " | ".join(record["tasks"]) + " |",
              "|---|" + "---|" * len(record["tasks"])]
    for s in record["settings"]:
        per = record["scores"][s["label"]]
        cells = [f"{sum(per[L][t] for L in lengths) / len(lengths):.0f}" for t in record["tasks"]]
        lines.append(f"| {s['label']} | " + " | ".join(cells) + " |")
    lines += ["", goal_check(record)]
    return "\n".join(lines) + "\n"


def goal_check(record: dict) -> str:
    """The issue's goal: a dashvl method at ρ=0.5 keeps >= 95% of the unmodified score, beats random and FastV
    at every ratio, at a FLOPs limit >= 1.5×. Says per method whether it holds."""
    base = suite_score(record, "unmodified")
    rivals = _rivals_at(record)
    lines = ["### Goal check (ρ = 0.5 keeps ≥ 95% of unmodified; ahead of random and FastV at every ratio; "
             "FLOPs limit ≥ 1.5×)", ""]
    for name, per in rivals.items():
        if name in ("random", "fastv") or 0.5 not in per:
            continue
        keeps = suite_score(record, per[0.5]) / base if base else 0.0
        ahead = all(suite_score(record, per[r]) > max(suite_score(record, rivals[o][r]) for o in ("random", "fastv")
                                                       if r in rivals.get(o, {}))
                    for r in per if all(r in rivals.get(o, {}) for o in ("random", "fastv")))
        fl = _flops(record, per[0.5])
        ok = keeps >= 0.95 and ahead and fl >= 1.5
        lines.append(f"- {name}: keeps {100 * keeps:.0f}% at ρ=0.5 ({fl:.2f}×), ahead of random and FastV at every "
                     f"ratio: {'yes' if ahead else 'no'} → goal {'met' if ok else 'not met'}")
    return "\n".join(lines)


def calibration_section(record: dict, calibration: dict) -> str:
    """Each budget's pick by ``dashvl.calibrate`` (on held-out prompts) against the table: the pick's suite score
    and the best score of any table row at least as fast (FLOPs limit >= the pick's)."""
    labels = {}
    for s in record["settings"]:
        spec = s["spec"]
        if spec is None:
            continue
        layer = DashConfig(layer=spec["layer"]).resolve_layer(record["num_layers"])
        labels[(spec["method"], layer, spec["ratio"], spec.get("kv", "drop"))] = s["label"]
    lines = ["### Calibration: what `dashvl.calibrate` picks on held-out prompts, against this table", "",
             f"{calibration['per_length']} held-out prompts per length ({calibration['lengths']}), "
             f"{calibration['new_tokens']} reference tokens each, {len(calibration['rows'])} candidates "
             f"(the table's dash, dash-avg and dash-snap rows), {calibration['seconds']:.0f} s. `{calibration['command']}`", "",
             "| max_loss | pick | its suite score | FLOPs limit | best row at least as fast | its score | gap |",
             "|---|---|---|---|---|---|---|"]
    for budget, pick in calibration["picks"].items():
        if pick is None:
            lines.append(f"| {budget} | none within the budget | | | | | |")
            continue
        name = labels.get((pick["method"], pick["layer"], pick["ratio"], pick["kv"]))
        if name is None:
            lines.append(f"| {budget} | {pick} (not a table row) | | | | | |")
            continue
        mine, fl = suite_score(record, name), _flops(record, name)
        rivals = [s["label"] for s in record["settings"] if _flops(record, s["label"]) >= fl - 1e-9]
        best = max(rivals, key=lambda n: suite_score(record, n))
        lines.append(f"| {budget} | {name} | {mine:.1f} | {fl:.2f}× | {best} | {suite_score(record, best):.1f} | "
                     f"{suite_score(record, best) - mine:.1f} |")
    return "\n".join(lines)


def plot(record: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, per in _rivals_at(record).items():
        ratios = sorted(per)
        ax.plot(ratios, [suite_score(record, per[r]) for r in ratios], marker="o", label=name,
                linewidth=2.5 if name.startswith("dash-avg") else 1.2)
    ax.axhline(suite_score(record, "unmodified"), color="black", linestyle="--", label="unmodified")
    at = DashConfig(layer=0.4).resolve_layer(record["num_layers"])
    ax.set_xlabel(f"ratio ρ (share of prompt tokens halted at layer {at} of {record['num_layers']})")
    ax.set_ylabel("suite score (mean over tasks and lengths)")
    ax.set_title(f"{record['model']}: long-context suite at equal budgets")
    ax.legend(fontsize=8, ncol=2)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m longctx.report", description=__doc__.split("\n\n")[0])
    p.add_argument("--shards", required=True, help="a glob of longctx.evaluate JSON files")
    p.add_argument("--out", required=True, help="path without suffix: writes .json, .md and .png")
    p.add_argument("--calibration", help="a longctx.calibration_check JSON to set against the table")
    a = p.parse_args(argv)
    record = merge(glob.glob(a.shards))
    text = markdown(record)
    if a.calibration and Path(a.calibration).exists():
        record["calibration"] = json.loads(Path(a.calibration).read_text())
        text += "\n" + calibration_section(record, record["calibration"]) + "\n"
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(record, indent=1) + "\n")
    out.with_suffix(".md").write_text(text)
    plot(record, out.with_suffix(".png"))
    print(out.with_suffix(".md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
