"""Speedup against ratio, measured next to the FLOPs limit, from the JSON files in bench/results/.

    python -m bench.plot_results     # writes bench/speedup_vs_ratio.png and bench/speedup_grid.png
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
    s2 = os.path.join(HERE, "results")
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
    grid()


def grid():
    """Session 3's grid (issue 6): both models, drop / keep × layer 2 / 0.4·L, SDPA, every length."""
    s3 = os.path.join(HERE, "results")
    models = (("Qwen2-VL-7B", "qwen2-vl-7b"), ("LLaVA-1.5-7B", "llava-1.5-7b"))
    panels = [(kv, layer) for layer in ("2", "0.4") for kv in ("drop", "keep")]
    fig, axes = plt.subplots(2, 4, figsize=(18, 8), sharey="row")
    for row, (title, name) in enumerate(models):
        path = os.path.join(s3, f"prefill_{name}_llm_cuda_sdpa_matrix2.json")
        for col, (kv, layer) in enumerate(panels):
            ax = axes[row, col]
            for i, (tokens, pts) in enumerate(series(path, kv=kv, layer=layer).items()):
                r, sp, lim = zip(*pts)
                ax.plot(r, sp, "o-", color=f"C{i}", label=f"{tokens} tokens")
                ax.plot(r, lim, "--", color=f"C{i}", alpha=0.5)
            ax.axhline(1.0, color="grey", lw=0.8)
            ax.set_title(f"{title} LLM prefill, kv='{kv}', layer {'2' if layer == '2' else '0.4·L'}", fontsize=10)
            ax.set_xlabel("ratio ρ (SDPA, H200, bf16; dashed: FLOPs limit)")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        axes[row, 0].set_ylabel("speedup over the unmodified model")
    fig.tight_layout()
    out = os.path.join(HERE, "speedup_grid.png")
    fig.savefig(out, dpi=100)
    print(out)


if __name__ == "__main__":
    main()
