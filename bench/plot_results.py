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


def series(path, kv="drop", layer="2", key="rows", graph=True, tokens=None):
    """{tokens: [(ratio, speedup, limit)]} for one kv mode and layer; ``graph=False``: the cuda_graph=False rows."""
    data = json.load(open(path))
    out = {}
    for res in data["results"]:
        if tokens is not None and res["tokens"] not in tokens:
            continue
        pts = [(0.0, 1.0, 1.0)]
        for row in res[key]:
            m = re.search(r"ratio=([\d.]+) layer=(\S+) kv=(\w+)", row["setting"])
            if m and m.group(2) == layer and m.group(3) == kv and float(m.group(1)) > 0 and \
                    ("cuda_graph=False" not in row["setting"]) == graph and "vision" not in row["setting"]:
                pts.append((float(m.group(1)), row["speedup"], row["limit"]))
        out[res["tokens"]] = sorted(pts)
    return out


def main():
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.4), sharey=True)
    s2 = os.path.join(HERE, "results", "session2")
    # LLM prefill on the default path (halted layers replayed as a CUDA graph up to 1,536 active slots)
    ax = axes[0]
    for i, (tokens, pts) in enumerate(series(os.path.join(s2, "prefill_qwen2-vl-7b_llm_cuda_sdpa_default.json")).items()):
        r, sp, lim = zip(*pts)
        ax.plot(r, sp, "o-", color=f"C{i}", label=f"{tokens} tokens")
        ax.plot(r, lim, "--", color=f"C{i}", alpha=0.5)
    ax.set_title("Qwen2-VL-7B LLM prefill, dashvl default (dashed: FLOPs limit)", fontsize=10)
    # short prompts: the graph against the layers one by one
    ax = axes[1]
    path = os.path.join(s2, "prefill_qwen2-vl-7b_llm_cuda_sdpa_graphs.json")
    for i, tokens in enumerate((576, 1088)):
        for graph, style in ((True, "o-"), (False, "s:")):
            (pts,) = series(path, graph=graph, tokens=(tokens,)).values()
            r, sp, lim = zip(*pts)
            ax.plot(r, sp, style, color=f"C{i}",
                    label=f"{tokens} tokens, " + ("CUDA graph (default)" if graph else "layers one by one"))
        ax.plot(r, lim, "--", color=f"C{i}", alpha=0.5)
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.set_title("Short prompts: halted layers as one CUDA graph or one by one", fontsize=10)
    # time to first token with the vision tower (session 1: long prompts, layers one by one)
    ax = axes[2]
    for i, (tokens, pts) in enumerate(series(os.path.join(HERE, "results", "prefill_qwen2-vl-7b_e2e_cuda_sdpa.json"),
                                             key="e2e_rows").items()):
        r, sp, lim = zip(*pts)
        ax.plot(r, sp, "o-", color=f"C{i}", label=f"{tokens} tokens")
        ax.plot(r, lim, "--", color=f"C{i}", alpha=0.5)
    ax.set_title("Qwen2-VL-7B time to first token, LLM halting only", fontsize=10)
    for ax in axes:
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
