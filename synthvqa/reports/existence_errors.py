"""Which existence questions a bundled model gets wrong, by what the image holds of the asked-for object.

    python -m synthvqa.reports.existence_errors --model llava-synth --n 400      # a name, a folder, or a hub id

The suite's No questions name an absent (colour, shape) that shares an attribute with a drawn object, so the
colour or the shape alone cannot settle them. A model that checks only one attribute shows it here: with the
colour alone, every No question whose colour is drawn gets Yes and every other one gets No. This is how
llava-synth's existence was found stuck at 75% after stage 5 (model card), and why stage 6 drew training No
questions that share the colour (``python -m synthvqa.train --hard-no``).

Kinds: ``Yes``; ``No, colour drawn`` (on other shapes only); ``No, shape drawn`` (in other colours only);
``No, both drawn`` (the colour on one object, the shape on another). Test split, greedy, on the CPU by default.
"""
from __future__ import annotations

import argparse

import torch

import dashvl
from synthvqa import suite as synth
from synthvqa.train.questions import prompt_for

KINDS = ("Yes", "No, colour drawn", "No, shape drawn", "No, both drawn")


def kind_of(objects, question: str, answer: str) -> str:
    colour, shape = question.split()[3:5]  # "Is there a red circle in the image?"
    if answer == "Yes":
        return "Yes"
    has_colour, has_shape = any(c == colour for c, _ in objects), any(s == shape for _, s in objects)
    return {(True, False): "No, colour drawn", (False, True): "No, shape drawn", (True, True): "No, both drawn"}[
        has_colour, has_shape]


@torch.no_grad()
def breakdown(model, processor, n: int, batch: int = 100) -> dict:
    """{kind: [correct, total]} over the first ``n`` test existence questions."""
    out = {k: [0, 0] for k in KINDS}
    for start in range(0, n, batch):
        # the scene (what make_sample draws, with what is on it): drawn once per question
        built = [synth._build("test", "existence", k) for k in range(start, min(n, start + batch))]
        enc = processor(text=[prompt_for(processor, q) for _, q, _ in built], images=[sc.img for sc, _, _ in built],
                        return_tensors="pt", padding=True).to(model.device)
        gen = model.generate(**enc, max_new_tokens=3, do_sample=False)
        texts = processor.batch_decode(gen[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
        for (scene, question, answer), t in zip(built, texts):
            kind = kind_of([(c, sh) for c, sh, _ in scene.objects], question, answer)
            out[kind][0] += synth.is_correct(t, (answer,))
            out[kind][1] += 1
    return out


def table(name: str, counts: dict) -> list[str]:
    lines = [f"{name}:", "", "| question | correct | of | % |", "|---|---|---|---|"]
    for kind, (ok, total) in counts.items():
        lines.append(f"| {kind} | {ok} | {total} | {100 * ok / max(total, 1):.0f} |")
    ok, total = (sum(v[i] for v in counts.values()) for i in (0, 1))
    lines.append(f"| all | {ok} | {total} | {100 * ok / max(total, 1):.1f} |")
    return lines


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="llava-synth")
    p.add_argument("--n", type=int, default=400, help="test existence questions (Yes/No pairs: even)")
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    if args.n <= 0:
        p.error(f"--n must be a positive number of questions; got {args.n}")
    model, processor = dashvl.load_model(args.model, device=args.device)
    lines = table(args.model, breakdown(model.eval(), processor, args.n))
    print("\n".join(lines))
    return lines


if __name__ == "__main__":
    main()
