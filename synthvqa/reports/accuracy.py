"""Accuracy of the bundled models per question family: unmodified, DASH, and random halting at equal budgets,
in the LLM, inside the vision tower, and both.

    python -m synthvqa.reports.accuracy                       # both bundled models -> synthvqa/reports/ACCURACY.md + a picture
    python -m synthvqa.reports.accuracy --per-family 200 --models qwen2-vl-synth --groups llm
    python -m synthvqa.reports.accuracy --groups vision,both --vision-ratios 0.5,0.75 --vision-layer 1

Greedy answers to ``synthvqa.suite``'s held-out test questions, exact match after lower-casing (the same
scoring as the model cards, through ``synthvqa.evaluate``). Writes ``synthvqa/reports/ACCURACY.md`` and
``synthvqa/reports/halting_example.png`` (which patches DASH halts on one test image).
"""
from __future__ import annotations

import argparse
import os
import time

import torch
from tqdm import tqdm

import dashvl
from synthvqa import suite as synth
from synthvqa.evaluate import evaluate
from synthvqa.reports.accuracy_bridge import marked  # accuracy_bridge's section stays
from synthvqa.reports.halted_cells import CELLS  # and halted_cells's

HERE = os.path.dirname(os.path.abspath(__file__))
NOTES = ("<!-- notes:start -->", "<!-- notes:end -->")  # what the numbers show, written by hand


GROUPS = ("llm", "vision", "both", "methods")


def assemble(lines: list[str], old: str) -> str:
    """The new file from this run's ``lines`` (a 4-line header first) and the ``old`` file's sections that other
    hands write: the notes (after the header), halted_cells's and accuracy_bridge's (at the end)."""
    notes, cells, bridge = (old[slice(*where)] if where else None
                            for where in (marked(old, *NOTES), marked(old, *CELLS), marked(old)))
    head, rest = lines[:4], lines[4:]
    return "\n".join(head + ([notes, ""] if notes else []) + rest) + "\n" + \
        "".join(f"\n{part}\n" for part in (cells, bridge) if part)


def settings(ratios, layer, vision_ratios=(), vision_layer=1, combined_ratio=0.5, groups=("llm",)):
    """(label, compress settings or None) per row. ``llm``: DASH (drop / keep) and random halting in the LLM;
    ``vision``: DASH and random halting inside the vision tower alone; ``both``: vision halting and LLM halting at
    ``combined_ratio`` together; ``methods``: every LLM scoring method (``dashvl.methods``, dashvl's own criteria
    and the baselines) at each ratio, kv drop, scope "all" for all of them, so every row halts the same number of
    tokens (FastV's own scope, "vision", would halt fewer)."""
    out = [("unmodified", None)]
    if "llm" in groups:
        for r in ratios:
            out += [(f"dash drop {r:g}", dict(ratio=r, layer=layer, kv="drop")),
                    (f"dash keep {r:g}", dict(ratio=r, layer=layer, kv="keep")),
                    (f"random drop {r:g}", dict(ratio=r, layer=layer, kv="drop", method="random"))]
    vis = lambda v: dict(vision_ratio=v, vision_layer=vision_layer)  # noqa: E731
    if "vision" in groups:
        for v in vision_ratios:
            out += [(f"vision {v:g}", dict(ratio=0.0, layer=layer, **vis(v))),
                    (f"random vision {v:g}", dict(ratio=0.0, layer=layer, method="random", **vis(v)))]
    if "methods" in groups:
        from dashvl.setting import method_names
        for r in ratios:
            out += [(f"{m} drop {r:g}", dict(ratio=r, layer=layer, kv="drop", method=m, scope="all"))
                    for m in method_names("llm")]
    if "both" in groups:
        r = combined_ratio
        for v in vision_ratios:
            out += [(f"vision {v:g} + dash drop {r:g}", dict(ratio=r, layer=layer, kv="drop", **vis(v))),
                    (f"vision {v:g} + dash keep {r:g}", dict(ratio=r, layer=layer, kv="keep", **vis(v)))]
    return out


def table(name, rows) -> list[str]:
    lines = [f"### {name}", "", "| setting | " + " | ".join(synth.FAMILIES) + " | mean |",
             "|---|" + "---|" * (len(synth.FAMILIES) + 1)]
    for label, acc in rows:
        cells = [f"{100 * acc[f]:.1f}" for f in synth.FAMILIES]
        mean = 100 * sum(acc.values()) / len(acc)
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {mean:.1f} |")
    return lines + [""]


def picture(model, processor, path, ratio, layer):
    """One test image with the tokens DASH halted above ``layer`` tinted red."""
    from dashvl import viz
    sample = next(s for s in synth.make_split("test", 12) if s.family == "colour")
    text = processor.apply_chat_template([{"role": "user", "content": [
        {"type": "image"}, {"type": "text", "text": sample.question}]}], add_generation_prompt=True)
    inputs = processor(text=[text], images=[sample.image], return_tensors="pt").to(model.device)
    with dashvl.compress(model, dashvl.DashConfig(ratio=ratio, layer=layer)) as h, torch.no_grad():  # the paper's Δ
        model(**inputs)
    overlay = viz.halted_overlay(h.trace, sample.image, 0)
    heat = viz.delta_heatmap(h.trace, sample.image, 0)
    from PIL import Image
    both = Image.new("RGB", (overlay.width + heat.width, max(overlay.height, heat.height)), "white")
    both.paste(overlay, (0, 0))
    both.paste(heat, (overlay.width, 0))
    both.save(path)
    return sample.question


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="qwen2-vl-synth,llava-synth")
    p.add_argument("--per-family", type=int, default=40)
    p.add_argument("--ratios", default="0.25,0.5,0.75,0.9")
    p.add_argument("--layer", type=int, default=1, help="activation layer (the bundled models have 4 layers)")
    p.add_argument("--vision-ratios", default="0.5,0.75", help="vision_ratio of the vision-tower rows")
    p.add_argument("--vision-layer", type=int, default=1, help="vision block v_s (the bundled towers have 4 blocks)")
    p.add_argument("--combined-ratio", type=float, default=0.5, help="LLM ratio of the vision + LLM rows")
    p.add_argument("--groups", default=",".join(GROUPS),
                   help="row groups: llm (DASH / random in the LLM), vision (in the vision tower), both, methods "
                        "(every LLM scoring method at each ratio, scope all)")
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--out", default=os.path.join(HERE, "ACCURACY.md"))
    p.add_argument("--picture", default=os.path.join(HERE, "halting_example.png"))
    args = p.parse_args(argv)
    ratios = [float(r) for r in args.ratios.split(",")]
    vision_ratios = [float(v) for v in args.vision_ratios.split(",") if v]
    groups = [g for g in args.groups.split(",") if g]
    bad = [g for g in groups if g not in GROUPS]
    if bad:
        p.error(f"--groups: unknown {bad}; choose from {GROUPS}")
    rows_of = settings(ratios, args.layer, vision_ratios, args.vision_layer, args.combined_ratio, groups)
    start = time.time()
    lines = ["# Accuracy of the bundled models with DASH", "",
             ("`make accuracy` regenerates every table of this file (this one, then `python -m synthvqa.reports.halted_cells` "
              "and `python -m synthvqa.reports.accuracy_bridge`; about an hour on 2 CPU cores). "
              if os.path.basename(args.out) == "ACCURACY.md" else "The command below regenerates this file: ") +
             f"`python -m synthvqa.reports.accuracy --per-family {args.per_family} --ratios {args.ratios} --layer {args.layer} "
             f"--vision-ratios {args.vision_ratios} --vision-layer {args.vision_layer} --combined-ratio "
             f"{args.combined_ratio:g} --groups {','.join(groups)}` "
             f"on {'a GPU' if torch.cuda.is_available() else 'the CPU'}; torch {torch.__version__}, "
             f"transformers {__import__('transformers').__version__}. Greedy answers to {args.per_family} held-out "
             "test questions per family, exact match (%). `dash drop/keep r`: DASH halts the lowest-Δ fraction r "
             f"of the prompt's tokens after LLM layer {args.layer} (scope all; drop: halted tokens leave attention, "
             "keep: they stay as frozen keys/values); `random drop r`: as many, chosen uniformly (seed 0). "
             f"`vision v`: inside the vision tower, each image's lowest-Δ fraction v of patches halts after vision "
             f"block {args.vision_layer} of 4 (LLM untouched); `random vision v`: as many, chosen uniformly; "
             "`vision v + dash …`: both at once.", ""]
    for name in args.models.split(","):
        model, processor = dashvl.load_model(name)
        rows = []
        for label, cfg in tqdm(rows_of, desc=name):
            quiet = lambda *a, **k: None  # noqa: E731
            if cfg is None:
                result = evaluate(model, processor, args.per_family, batch=args.batch, workers=0,
                                  device=str(model.device), log=quiet)
            else:
                with dashvl.compress(model, dashvl.DashConfig(**cfg)):  # a row's settings over the paper's, not VISION_DEFAULTS
                    result = evaluate(model, processor, args.per_family, batch=args.batch, workers=0,
                                      device=str(model.device), log=quiet)
            rows.append((label, result["accuracy"]))
        lines += table(name, rows)
        if name == args.models.split(",")[0] and args.picture:
            question = picture(model, processor, args.picture, 0.75, args.layer)
            lines += [f"![tokens halted by DASH]({os.path.basename(args.picture)})", "",
                      f"{name}, question {question!r}, ratio 0.75 after layer {args.layer}: left, the image "
                      "tokens halted (red); right, Δ at the activation layer.", ""]
    lines.append(f"Run time: {(time.time() - start) / 60:.1f} min.")
    old = open(args.out).read() if os.path.exists(args.out) else ""
    with open(args.out, "w") as f:
        f.write(assemble(lines, old))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
