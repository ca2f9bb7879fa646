"""The generate() benchmark as one picture: per prompt, each setting's speedup over the unmodified model for the
first token, a decode step and the whole answer.

    python -m bench.plot_generate bench/results/generate_llava-1.5-7b_e2e_cuda_sdpa_images.json \\
        bench/results/generate_qwen2-vl-7b_llm_cuda_sdpa_4k.json --out bench/generate_speedups.png
    python -m bench.plot_generate bench/results/generate_qwen2-vl-7b_llm_cuda_sdpa_static_{1k,16k}.json \\
        --out bench/generate_static.png
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

__all__ = ["panels", "main"]



def _speedup(row: dict, metric: str) -> float:
    """A row's speedup for ``metric``; a decode step falls back to ``per_token`` where ``step`` was not timed
    (the static cache: a timing hook would be compiled into its step)."""
    value = row.get(f"{metric}_speedup", float("nan"))
    if metric == "step" and value != value:
        value = row.get("per_token_speedup", float("nan"))
    return value


def _metrics(row: dict) -> tuple[list[str], list[str]]:
    """The metrics a file's rows carry: first token, decode step and each whole answer length it timed."""
    whole = sorted((k for k in row if k.startswith("whole_") and not k.endswith("_speedup")),
                   key=lambda k: int(k.split("_")[1]))
    return ["ttft", "step"] + whole, ["first token", "decode step"] + [f"whole {k.split('_')[1]}" for k in whole]


def panels(paths) -> list[tuple[str, list[dict]]]:
    """``[(title, rows)]``: one panel per (file, prompt length, batch, cache)."""
    out = []
    for path in paths:
        record = json.loads(Path(path).read_text())
        model = record["info"].get("model", Path(path).stem)
        for r in record["results"]:
            out.append((f"{model}, {r['tokens']} tokens, batch {r['batch']}, {r['cache']}", r["rows"]))
    return out


def main(argv=None) -> int:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    p = argparse.ArgumentParser(prog="python -m bench.plot_generate", description=__doc__.split("\n\n")[0])
    p.add_argument("files", nargs="+")
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    items = panels(a.files)
    cols = min(len(items), 4)
    rows_n = -(-len(items) // cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(4.6 * cols, 3.8 * rows_n), squeeze=False)
    for ax in axes.flat[len(items):]:
        ax.axis("off")
    for ax, (title, rows) in zip(axes.flat, items):
        metrics, labels = _metrics(rows[0])
        # every row but the first; a later "unmodified" row is the model against itself: the run's noise floor
        settings = rows[1:]
        width = 0.8 / max(len(settings), 1)
        for i, r in enumerate(settings):
            values = [_speedup(r, m) for m in metrics]
            twin = r["setting"] == "unmodified"
            ax.bar([j + i * width for j in range(len(metrics))], values, width,
                   label="unmodified again (noise floor)" if twin else r["setting"],
                   color="lightgrey" if twin else None, edgecolor="grey" if twin else None)
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_xticks([j + width * (len(settings) - 1) / 2 for j in range(len(metrics))], labels, fontsize=8)
        ax.set_title(title, fontsize=9)
        ax.set_ylabel("× over unmodified (higher is faster)")
    axes.flat[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(a.out, dpi=110)
    print(a.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
