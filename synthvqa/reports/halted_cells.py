"""Which tokens DASH halts on the bundled models: prompt text or image, and among image tokens, object or background.

    python -m synthvqa.reports.halted_cells                 # 8 test questions per family, ratios 0.25 and 0.5, layer 1
    python -m synthvqa.reports.halted_cells --models qwen2-vl-smollm2,llava-smollm2 --layer 2,7,12 --ratios 0.5,0.778 \
        --out synthvqa/reports/vl_table_smollm2.md            # the models on SmolLM2 (30 layers)

For each question: one prefill under ``dashvl.compress(ratio, layer)``; the image tokens' cells are labelled
object (a shape or a word lies under the cell, ``synthvqa.train.labels.cell_labels``) or background. Prints, per model
and ratio: the share of halted tokens that are image tokens, and the share of object and of background cells
that halt; writes that table between the ``cells`` markers of synthvqa/reports/ACCURACY.md (``--out ''``: print only), which
``synthvqa.reports.accuracy`` keeps when it rewrites the file. The notes there quote it.
"""
from __future__ import annotations

import argparse
import os

import torch

import dashvl
from synthvqa import suite as synth
from synthvqa.reports.accuracy_bridge import write_section
from synthvqa.train.labels import cell_labels
from synthvqa.train.questions import prompt_for

HERE = os.path.dirname(os.path.abspath(__file__))
CELLS = ("<!-- cells:start -->", "<!-- cells:end -->")


@torch.no_grad()
def shares(model, processor, per_family: int, ratio: float, layer: int, scope: str = "all") -> dict:
    halted_image = halted_all = obj_halted = obj_all = bg_halted = bg_all = 0
    for family in synth.FAMILIES:
        for k in range(per_family):
            scene, question, _ = synth._build("test", family, k)  # make_sample's image and question, drawn once
            inputs = processor(text=[prompt_for(processor, question)], images=[scene.img], return_tensors="pt")
            with dashvl.compress(model, dashvl.DashConfig(ratio=ratio, layer=layer, scope=scope)) as h:  # Δ's choice
                model(**inputs)
                trace = h.trace
            halted_all += int(trace.num_halted()[0])
            halted_image += int(trace.num_halted("image")[0])
            mask = trace.patch_mask(0)[0]  # [rows, cols]
            labels = cell_labels(scene, *mask.shape)
            obj = (labels[:, 0] > 0) | (labels[:, 2] > 0)
            flat = mask.reshape(-1)
            obj_halted += int(flat[obj].sum())
            obj_all += int(obj.sum())
            bg_halted += int(flat[~obj].sum())
            bg_all += int((~obj).sum())
    return dict(image_share=halted_image / max(halted_all, 1), object_rate=obj_halted / max(obj_all, 1),
                background_rate=bg_halted / max(bg_all, 1), questions=per_family * len(synth.FAMILIES))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="qwen2-vl-synth,llava-synth")
    p.add_argument("--per-family", type=int, default=8)
    p.add_argument("--ratios", default="0.25,0.5")
    p.add_argument("--layer", default="1", help="activation layer(s), comma-separated")
    p.add_argument("--scope", default="all", choices=("all", "vision"),
                   help="all: every prompt token may halt (the paper's); vision: image tokens only")
    p.add_argument("--out", default=os.path.join(HERE, "ACCURACY.md"), help="'' to print the table only")
    args = p.parse_args(argv)
    layers = [int(x) for x in args.layer.split(",")]
    lines = ["| model | layer | ratio | halted tokens that are image tokens | object cells halted | "
             "background cells halted |", "|---|---|---|---|---|---|"]
    for name in args.models.split(","):
        model, processor = dashvl.load_model(name)
        for layer in layers:
            for ratio in [float(r) for r in args.ratios.split(",")]:
                s = shares(model, processor, args.per_family, ratio, layer, args.scope)
                lines.append(f"| {name} | {layer} | {ratio:g} | {100 * s['image_share']:.0f}% | "
                             f"{100 * s['object_rate']:.0f}% | {100 * s['background_rate']:.0f}% |")
                print(lines[-1], flush=True)
    print("\n".join(lines))
    if args.out:
        intro = (f"Which tokens DASH halts (`python -m synthvqa.reports.halted_cells --models {args.models} --layer "
                 f"{args.layer} --ratios {args.ratios} --scope {args.scope}`: {args.per_family} test questions per "
                 f"family, scope {args.scope}; \"object\" cells have a shape or a word under them):")
        write_section(args.out, "\n".join([CELLS[0], intro, "", *lines, CELLS[1]]), *CELLS)
    return lines


if __name__ == "__main__":
    main()
