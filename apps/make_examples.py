"""Writes the halting viewer's example gallery: images and questions of the bundled models' own suite.

    python -m apps.make_examples        # writes assets/examples/<family>-<k>.png and prints the EXAMPLES entries

The bundled models answer only the suite's kind of question about the suite's kind of picture, so the gallery
shows test-split samples (``synthvqa.suite.make_sample("test", family, k)``): per family, the first ``k`` whose PNG is
under ``MAX_BYTES`` (and, for count, with 3 shapes or more) and which both bundled models answer right unmodified (greedy, CPU). Whether DASH keeps the
answer is left to the viewer to show. A real Qwen2-VL or LLaVA answers these questions too.
"""
from __future__ import annotations

import io
from pathlib import Path

import torch

from synthvqa import suite as synth
from dashvl.models import chat_prompt, load_model

FAMILIES = ("colour", "reading", "count", "existence")
# what makes a sample worth showing beyond being right: more than one or two shapes to count
INTERESTING = {"count": lambda sample: int(sample.answer) >= 3}
MAX_BYTES = 200_000  # the suite's textured backgrounds do not compress: its PNGs are 60-400 kB
OUT = Path(__file__).resolve().parent.parent / "assets" / "examples"


def png_bytes(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "PNG", optimize=True)
    return buf.getvalue()


@torch.no_grad()
def answer(model, processor, sample) -> str:
    enc = processor(text=[chat_prompt(processor, sample.question)], images=[sample.image], return_tensors="pt")
    out = model.generate(**enc, max_new_tokens=6, do_sample=False)
    return processor.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)[0]


def pick(models, family: str, limit: int = 200):
    for k in range(limit):
        sample = synth.make_sample("test", family, k)
        if not INTERESTING.get(family, bool)(sample) or len(png_bytes(sample.image)) >= MAX_BYTES:
            continue
        if all(synth.is_correct(answer(m, p, sample), sample.answers) for m, p in models):
            return k, sample
    raise RuntimeError(f"no {family} sample among the first {limit} fits (PNG < {MAX_BYTES} B, answered right)")


def main():
    models = [load_model(name, device="cpu") for name in ("qwen2-vl-synth", "llava-synth")]
    for family in FAMILIES:
        k, sample = pick(models, family)
        name = f"{family}-{k}.png"
        (OUT / name).write_bytes(png_bytes(sample.image))
        print(f"    ({name!r}, {sample.question!r}),  # answer: {sample.answer}")


if __name__ == "__main__":
    main()
