"""The vision-language accuracy table at equal visual-token budgets (the DART / FlowCut protocol the paper's
Qwen2-VL figure follows): for each visual-token reduction (50%, 66.7%, 77.8%, 88.9%), every method keeps the same
number of each image's visual tokens in the LLM, and each row states how many it kept (measured from the trace).

    python -m synthvqa.reports.vl_table --models qwen2-vl-synth,llava-synth --per-family 30 \\
        --out synthvqa/reports/vl_table.md

Rows per reduction r (scope "vision" unless said; the LLM's layers as given by ``--layers``, e.g. 2, 0.25·L, 0.4·L):
- DASH, the paper's Δ, ``drop`` and ``keep``, at each layer; DASH ``drop`` with scope "all" at the first layer
  (r of all the prompt's tokens: its visual count is stated);
- dash-snap (dashvl's criterion: Δ averaged over the layers up to l_s, rank-averaged with SnapKV) at each layer;
- at the first layer: random, FastV, SnapKV, dash-q (each token's part in the question's attention update),
  V2Drop (the least-varied visual tokens, Chen et al. 2025);
- DivPrune (Alvar et al. 2025; greedy max-min diversity) at layer 0, the nearest to its before-the-LLM selection;
- image downsampling to the same token count, before the model;
- vision-tower halting alone (``vision_ratio`` r inside the tower: the LLM keeps every visual token) and combined
  with DASH drop at the first layer.
Greedy answers to ``synthvqa.suite``'s held-out test questions, exact match (the model cards' scoring).
"""
from __future__ import annotations

import argparse
import os
import re
import time

import torch
from tqdm import tqdm

import dashvl
from dashvl.policy import KIND_IMAGE
from synthvqa import suite as synth
from synthvqa.evaluate import evaluate

__all__ = ["rows_for", "main", "REDUCTIONS"]

HERE = os.path.dirname(os.path.abspath(__file__))
REDUCTIONS = (0.5, 0.667, 0.778, 0.889)   # 50% and the paper's 66.7 / 77.8 / 88.9% (192 / 128 / 64 of 576)


def rows_for(reduction: float, layers, vision_layer) -> list[tuple[str, dashvl.Setting]]:
    """(label, setting) of one reduction's rows; ``layers``: activation layers as given (ints or fractions)."""
    S, r, first = dashvl.Setting, reduction, layers[0]
    out = []
    for layer in layers:
        out += [(f"dash drop, l={layer}", S(method="dash", ratio=r, layer=layer, kv="drop", scope="vision")),
                (f"dash keep, l={layer}", S(method="dash", ratio=r, layer=layer, kv="keep", scope="vision")),
                (f"dash-snap drop, l={layer}", S(method="dash-snap", ratio=r, layer=layer, kv="drop", scope="vision"))]
    out += [(f"dash drop, scope all, l={first}", S(method="dash", ratio=r, layer=first, kv="drop", scope="all"))]
    out += [(f"{m}, l={first}", S(method=m, ratio=r, layer=first, kv="drop", scope="vision"))
            for m in ("random", "fastv", "snapkv", "dash-q", "v2drop")]
    out += [("divprune, l=0", S(method="divprune", ratio=r, layer=0, kv="drop", scope="vision")),
            ("downsample", S(method="downsample", ratio=r)),
            (f"vision tower only, v={vision_layer}", S(method="dash", ratio=0.0, layer=first,
                                                       vision_ratio=r, vision_layer=vision_layer)),
            (f"vision tower + dash drop, l={first}", S(method="dash", ratio=r, layer=first, kv="drop", scope="vision",
                                                       vision_ratio=r, vision_layer=vision_layer))]
    return out


def _score(model, processor, setting, per_family, batch):
    """(accuracy per family, mean visual tokens the LLM kept above l_s per question)."""
    kept = []

    with dashvl.apply(model, processor, setting, trace=True) as applied:
        def count(_enc):
            t = applied.trace
            kept.append(((t.active & (t.kinds == KIND_IMAGE)).sum(1).float()).tolist())

        result = evaluate(model, applied.processor, per_family, batch=batch, workers=0, device=str(model.device),
                          log=lambda *a, **k: None, on_batch=count)
    flat = [k for b in kept for k in b]
    return result["accuracy"], sum(flat) / max(len(flat), 1)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="qwen2-vl-synth,llava-synth")
    p.add_argument("--per-family", type=int, default=30)
    p.add_argument("--reductions", default=",".join(map(str, REDUCTIONS)))
    p.add_argument("--layers", default="2,0.25,0.4", help="activation layers: ints, or fractions of the depth")
    p.add_argument("--vision-layer", default="1", help="vision block v_s of the tower rows (int or fraction)")
    p.add_argument("--batch", type=int, default=60)
    p.add_argument("--rows", default="", help="only the rows whose label matches this regular expression "
                                              "(the unmodified row always runs), e.g. 'fastv|dash-q'")
    p.add_argument("--out", default=os.path.join(HERE, "vl_table.md"))
    a = p.parse_args(argv)
    try:
        chosen = re.compile(a.rows)
    except re.error as err:
        p.error(f"--rows is a regular expression: {err}")
    number = lambda x: float(x) if "." in x else int(x)  # noqa: E731
    layers = [number(x) for x in a.layers.split(",")]
    vision_layer = number(a.vision_layer)
    reductions = [float(x) for x in a.reductions.split(",")]
    start = time.time()
    lines = ["# Vision-language accuracy at equal visual-token budgets", "",
             f"`python -m synthvqa.reports.vl_table --models {a.models} --per-family {a.per_family} --reductions "
             f"{a.reductions} --layers {a.layers} --vision-layer {a.vision_layer}"
             + (f" --rows '{a.rows}'" if a.rows else "") + "` on "
             f"{'a GPU' if torch.cuda.is_available() else 'the CPU'}; torch {torch.__version__}, transformers "
             f"{__import__('transformers').__version__}. {a.per_family} held-out questions per family, greedy, exact "
             "match (%). `kept`: the visual tokens per question the LLM still processes above l_s (mean, from the "
             "trace; downsampling: the tokens the smaller image gives). Layers: as given (a fraction is of the "
             "LLM's depth).", ""]
    for name in a.models.split(","):
        model, processor = dashvl.load_model(name)
        plan = [("unmodified", dashvl.Setting())] + [(f"{label}", s) for r in reductions
                                                     for label, s in rows_for(r, layers, vision_layer)
                                                     if chosen.search(label)]
        depth = model.config.get_text_config().num_hidden_layers
        lines += [f"## {name} ({depth} LLM layers)", ""]
        head = "| reduction | setting | kept | " + " | ".join(synth.FAMILIES) + " | mean |"
        lines += [head, "|---|---|---|" + "---|" * (len(synth.FAMILIES) + 1)]
        for i, (label, setting) in enumerate(tqdm(plan, desc=name)):
            acc, kept = _score(model, processor, setting, a.per_family, a.batch)
            reduction = "0" if i == 0 else f"{setting.ratio if setting.ratio else setting.vision_ratio:.1%}"
            cells = [f"{100 * acc[f]:.1f}" for f in synth.FAMILIES]
            lines.append(f"| {reduction} | {label} | {kept:.0f} | " + " | ".join(cells)
                         + f" | {100 * sum(acc.values()) / len(acc):.1f} |")
            print(lines[-1], flush=True)
        lines.append("")
    lines.append(f"Run time: {(time.time() - start) / 60:.1f} min.")
    with open(a.out, "w") as f:
        f.write("\n".join(lines) + "\n")
    print(a.out)


if __name__ == "__main__":
    main()
