"""Speedup against ratio, measured next to the FLOPs limit, from the JSON files in bench/results/.

    python bench/plot_results.py     # writes bench/speedup_vs_ratio.png
"""
import json
import os
import re

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def series(path, kv="drop", layer="2", key="rows"):
    """{tokens: [(ratio, speedup, limit)]} for one kv mode and layer."""
    data = json.load(open(path))
    out = {}
    for res in data["results"]:
        pts = [(0.0, 1.0, 1.0)]
        for row in res[key]:
            m = re.search(r"ratio=([\d.]+) layer=(\S+) kv=(\w+)", row["setting"])
            if m and m.group(2) == layer and m.group(3) == kv and float(m.group(1)) > 0:
                pts.append((float(m.group(1)), row["speedup"], row["limit"]))
        out[res["tokens"]] = sorted(pts)
    return out


def main():
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    panels = [("Qwen2-VL-7B LLM prefill (text tokens), layer 2", "llm_sweep_qwen2-vl-7b_sdpa.json", "rows"),
              ("Qwen2-VL-7B time to first token (vision tower + LLM)", "prefill_qwen2-vl-7b_e2e_cuda_sdpa.json",
               "e2e_rows")]
    for ax, (title, name, key) in zip(axes, panels):
        for i, (tokens, pts) in enumerate(series(os.path.join(HERE, "results", name), key=key).items()):
            r, s, lim = zip(*pts)
            colour = f"C{i}"
            ax.plot(r, s, "o-", color=colour, label=f"{tokens} tokens: measured")
            ax.plot(r, lim, "--", color=colour, alpha=0.6, label=f"{tokens} tokens: FLOPs limit")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("ratio ρ (fraction of tokens halted), kv='drop', SDPA, H200, bf16")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0].set_ylabel("speedup over the unmodified model")
    fig.tight_layout()
    out = os.path.join(HERE, "speedup_vs_ratio.png")
    fig.savefig(out, dpi=110)
    print(out)


if __name__ == "__main__":
    main()
