"""A synthetic visual-QA suite: coloured shapes and rendered words on textured, cluttered backgrounds.

Deterministic: a sample depends only on ``(split, family, index)`` (Python's ``random`` seeded with a string,
which does not depend on ``PYTHONHASHSEED``), so ``make_split("test", n)`` is the same list everywhere and a
longer list starts with the shorter one. The train / val / test splits use disjoint seed strings.

Families (all answers need the image; every question names something that only the picture settles):

==========  ===============================================  ===========================================
family      question                                         answer
==========  ===============================================  ===========================================
existence   Is there a {colour} {shape} in the image?        ``Yes`` / ``No`` (MME style: every image
                                                             gets one Yes and one No question, a pair)
colour      What colour is the {shape}?                      one of ``COLOURS``
shape       What shape is the {colour} object?               one of ``SHAPES``
count       How many shapes are in the image?                ``1`` … ``6``
position    Is the {colour} {shape} on the left, right, ...  ``left`` / ``right`` / ``top`` / ``bottom``
reading     What word is written in the image?               one of ``WORDS`` (TextVQA style, 10 answers)
==========  ===============================================  ===========================================

Rows for lmms-eval-style offline tasks: ``mme_rows`` (the ``mme`` schema: question_id, image, question,
answer, category) and ``textvqa_rows`` (the ``textvqa_val`` schema: question_id, image, question, answers).
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = ["FAMILIES", "SPLITS", "COLOURS", "SHAPES", "POSITIONS", "WORDS", "Sample", "make_split", "make_sample",
           "mme_rows", "textvqa_rows", "MME_SUFFIX", "LMMS_POST_PROMPT"]

FAMILIES = ("existence", "colour", "shape", "count", "position", "reading")
SPLITS = ("train", "val", "test")
COLOURS = {"red": (220, 30, 30), "green": (30, 165, 50), "blue": (35, 80, 235), "yellow": (245, 215, 20),
           "purple": (150, 50, 200), "orange": (255, 135, 0)}
SHAPES = ("circle", "square", "triangle", "star")
POSITIONS = ("left", "right", "top", "bottom")
WORDS = ("cat", "dog", "sun", "tree", "book", "fish", "bird", "moon", "star", "door", "cake", "milk", "rain",
         "snow", "ship", "lamp", "road", "park", "shop", "stop", "open", "exit", "taxi", "bank", "cafe", "hotel",
         "train", "music", "bread", "apple", "water", "clock", "house", "river", "table", "chair", "phone", "plant",
         "light", "sale")
MIN_SIDE, MAX_SIDE = 160, 448
MME_SUFFIX = " Please answer yes or no."  # what MME's own questions end with
LMMS_POST_PROMPT = "\nAnswer the question using a single word or phrase."  # lmms-eval's usual post_prompt


@dataclass(frozen=True)
class Sample:
    """One question about one image.

    ``answers`` holds the accepted answers (10 for ``reading``, TextVQA style; ``(answer,)`` otherwise).
    ``pair_id`` links the Yes and the No question asked about the same ``existence`` image; None otherwise.
    """
    id: str
    image: Image.Image
    question: str
    answer: str
    answers: tuple[str, ...]
    family: str
    pair_id: str | None


# --- drawing -------------------------------------------------------------------------------------------------

def _background(rng: random.Random, w: int, h: int) -> Image.Image:
    """A muted (low-saturation) textured background with grey clutter: lines, blobs, dots."""
    g = np.random.default_rng(rng.getrandbits(63))
    base = rng.uniform(70, 190)
    tint = np.array([rng.uniform(-18, 18) for _ in range(3)], np.float32)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    kind = rng.choice(("noise", "stripes", "checker", "gradient"))
    if kind == "stripes":
        a, f = rng.uniform(0, math.pi), rng.uniform(0.05, 0.3)
        lum = 25 * np.sin(f * (xx * math.cos(a) + yy * math.sin(a)))
    elif kind == "checker":
        c = rng.randint(8, 40)
        lum = 22 * (((xx // c) + (yy // c)) % 2 * 2 - 1)
    elif kind == "gradient":
        a = rng.uniform(0, 2 * math.pi)
        lum = 40 * ((xx * math.cos(a) + yy * math.sin(a)) / max(w, h))
    else:
        lum = np.zeros((h, w), np.float32)
    lum += g.standard_normal((h, w), dtype=np.float32) * rng.uniform(4, 16) + base
    arr = (lum[..., None] + tint[None, None, :]) + g.integers(-5, 6, (h, w, 3), dtype=np.int8)
    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(rng.randint(3, 12)):  # clutter, all grey-ish so that it has no colour name
        v = rng.randint(20, 235)
        grey = tuple(int(min(255, max(0, v + rng.randint(-12, 12)))) for _ in range(3))
        x, y = rng.randint(0, w), rng.randint(0, h)
        if rng.random() < 0.5:
            draw.line((x, y, x + rng.randint(-60, 60), y + rng.randint(-60, 60)), fill=grey, width=rng.randint(1, 3))
        else:
            r = rng.randint(2, 7)
            draw.ellipse((x - r, y - r, x + r, y + r), fill=grey)
    return img


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, box: tuple[int, int, int, int], colour: tuple[int, int, int]):
    x0, y0, x1, y1 = box
    cx, cy, r = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2
    if shape == "circle":
        draw.ellipse(box, fill=colour)
    elif shape == "square":
        draw.rectangle((x0 + 0.1 * r, y0 + 0.1 * r, x1 - 0.1 * r, y1 - 0.1 * r), fill=colour)
    elif shape == "triangle":
        draw.polygon([(cx, y0), (x1, y1 - 0.1 * r), (x0, y1 - 0.1 * r)], fill=colour)
    elif shape == "star":
        pts = []
        for i in range(10):
            rad = r if i % 2 == 0 else 0.45 * r
            a = -math.pi / 2 + i * math.pi / 5
            pts.append((cx + rad * math.cos(a), cy + 0.08 * r + rad * math.sin(a)))
        draw.polygon(pts, fill=colour)
    else:
        raise ValueError(f"unknown shape {shape!r}")


def _overlaps(box, boxes, margin: int = 4) -> bool:
    x0, y0, x1, y1 = box
    return any(x0 < b[2] + margin and b[0] < x1 + margin and y0 < b[3] + margin and b[1] < y1 + margin for b in boxes)


def _place(rng: random.Random, w: int, h: int, bw: int, bh: int, taken: list, region=None):
    """A free box of size bw×bh (inside ``region`` = bounds for the centre, if given), or None."""
    for _ in range(300):
        if region is None:
            x0, y0 = rng.randint(2, w - bw - 2), rng.randint(2, h - bh - 2)
        else:
            (cx0, cx1), (cy0, cy1) = region
            cx0, cx1 = max(cx0, bw / 2 + 2), min(cx1, w - bw / 2 - 2)
            cy0, cy1 = max(cy0, bh / 2 + 2), min(cy1, h - bh / 2 - 2)
            if cx0 > cx1 or cy0 > cy1:
                return None
            x0, y0 = int(rng.uniform(cx0, cx1) - bw / 2), int(rng.uniform(cy0, cy1) - bh / 2)
        box = (x0, y0, x0 + bw, y0 + bh)
        if not _overlaps(box, taken):
            return box
    return None


def _region(pos: str, w: int, h: int):
    """Where the centre of an object 'on the ``pos``' lies: an outer third, and the middle of the other axis."""
    mid_x, mid_y = (0.35 * w, 0.65 * w), (0.35 * h, 0.65 * h)
    return {"left": ((0, 0.28 * w), mid_y), "right": ((0.72 * w, w), mid_y),
            "top": (mid_x, (0, 0.28 * h)), "bottom": (mid_x, (0.72 * h, h))}[pos]


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: one fixed-size bitmap font
        return ImageFont.load_default()


class _Scene:
    """An image being drawn: objects are ``(colour, shape, box)``; placement never overlaps."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.w, self.h = rng.randint(MIN_SIDE, MAX_SIDE), rng.randint(MIN_SIDE, MAX_SIDE)
        self.img = _background(rng, self.w, self.h)
        self.draw = ImageDraw.Draw(self.img)
        self.boxes: list[tuple] = []
        self.objects: list[tuple[str, str, tuple]] = []
        self.words: list[tuple[str, tuple]] = []
        m = min(self.w, self.h)
        self.size_range = (max(22, m // 9), max(26, m // 5))

    def add_shape(self, colour: str, shape: str, region=None) -> bool:
        for shrink in (1.0, 0.8, 0.65):
            s = int(self.rng.randint(*self.size_range) * shrink)
            s = max(s, 20)
            box = _place(self.rng, self.w, self.h, s, s, self.boxes, region)
            if box is not None:
                _draw_shape(self.draw, shape, box, COLOURS[colour])
                self.boxes.append(box)
                self.objects.append((colour, shape, box))
                return True
        return False

    def add_word(self, word: str) -> bool:
        text = word.upper()
        for size in range(self.rng.randint(22, 40), 13, -3):
            font = _font(size)
            l, t, r, b = self.draw.textbbox((0, 0), text, font=font)
            pad = self.rng.randint(3, 7)
            bw, bh = r - l + 2 * pad, b - t + 2 * pad
            if bw > self.w - 8 or bh > self.h - 8:
                continue
            box = _place(self.rng, self.w, self.h, bw, bh, self.boxes)
            if box is None:
                continue
            dark = self.rng.random() < 0.5
            plate = self.rng.randint(215, 250) if dark else self.rng.randint(10, 45)
            ink = self.rng.randint(0, 40) if dark else self.rng.randint(220, 255)
            if self.rng.random() < 0.8:
                self.draw.rectangle(box, fill=(plate,) * 3)
            self.draw.text((box[0] + pad - l, box[1] + pad - t), text, font=font, fill=(ink,) * 3)
            self.boxes.append(box)
            self.words.append((word, box))
            return True
        return False


def _distinct_objects(rng: random.Random, n: int, unique: str | None = None) -> list[tuple[str, str]]:
    """``n`` different (colour, shape) pairs; ``unique="shape"`` / ``"colour"`` also makes that attribute unique."""
    out: list[tuple[str, str]] = []
    while len(out) < n:
        c, s = rng.choice(list(COLOURS)), rng.choice(SHAPES)
        if (c, s) in out or unique == "shape" and any(s == o[1] for o in out) \
                or unique == "colour" and any(c == o[0] for o in out):
            continue
        out.append((c, s))
    return out


def _fill(scene: _Scene, objects: list[tuple[str, str]]) -> None:
    for c, s in objects:
        if not scene.add_shape(c, s):
            raise RuntimeError("no room for a shape")  # never reached at these sizes; guarded by the tests


def _maybe_clutter_word(scene: _Scene) -> None:
    if scene.rng.random() < 0.3:
        scene.add_word(scene.rng.choice(WORDS))


# --- one sample per family -----------------------------------------------------------------------------------

def _existence(rng: random.Random, yes: bool):
    scene = _Scene(rng)
    objs = _distinct_objects(rng, rng.randint(1, 4))
    _fill(scene, objs)
    _maybe_clutter_word(scene)
    present = rng.choice(objs)
    # the No question shares an attribute with something drawn, so that colour or shape alone does not settle it
    c, s = present
    candidates = [(c2, s) for c2 in COLOURS if (c2, s) not in objs] + [(c, s2) for s2 in SHAPES if (c, s2) not in objs]
    if not candidates:
        candidates = [(c2, s2) for c2 in COLOURS for s2 in SHAPES if (c2, s2) not in objs]
    absent = rng.choice(candidates)
    qc, qs = present if yes else absent
    return scene, f"Is there {_a(qc)} {qc} {qs} in the image?", "Yes" if yes else "No"


def _colour(rng: random.Random):
    scene = _Scene(rng)
    objs = _distinct_objects(rng, rng.randint(1, 4), unique="shape")
    _fill(scene, objs)
    _maybe_clutter_word(scene)
    c, s = rng.choice(objs)
    return scene, f"What colour is the {s}?", c


def _shape(rng: random.Random):
    scene = _Scene(rng)
    objs = _distinct_objects(rng, rng.randint(1, 4), unique="colour")
    _fill(scene, objs)
    _maybe_clutter_word(scene)
    c, s = rng.choice(objs)
    return scene, f"What shape is the {c} object?", s


def _count(rng: random.Random, n: int):
    scene = _Scene(rng)
    objs = [(rng.choice(list(COLOURS)), rng.choice(SHAPES)) for _ in range(n)]
    _fill(scene, objs)
    _maybe_clutter_word(scene)
    return scene, "How many shapes are in the image?", str(n)


def _position(rng: random.Random, pos: str):
    scene = _Scene(rng)
    objs = _distinct_objects(rng, rng.randint(1, 3))
    (c, s), others = objs[0], objs[1:]
    if not scene.add_shape(c, s, region=_region(pos, scene.w, scene.h)):
        raise RuntimeError("no room for the target")
    _fill(scene, others)
    _maybe_clutter_word(scene)
    return scene, f"Is the {c} {s} on the left, right, top or bottom of the image?", pos


def _reading(rng: random.Random):
    scene = _Scene(rng)
    word = rng.choice(WORDS)
    if not scene.add_word(word):
        raise RuntimeError("no room for the word")
    _fill(scene, _distinct_objects(rng, rng.randint(0, 2)))
    return scene, "What word is written in the image?", word


def _a(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}; got {split!r}")


def _build(split: str, family: str, k: int) -> tuple[_Scene, str, str]:
    """The drawn scene (with what is on it), the question and the answer; labels cycle by ``k`` (balanced)."""
    if family == "existence":  # a Yes/No pair shares its seed, hence its image
        return _existence(random.Random(f"dashvl-synth/{split}/existence/{k // 2}"), yes=k % 2 == 0)
    rng = random.Random(f"dashvl-synth/{split}/{family}/{k}")
    if family == "colour":
        return _colour(rng)
    if family == "shape":
        return _shape(rng)
    if family == "count":
        return _count(rng, 1 + k % 6)
    if family == "position":
        return _position(rng, POSITIONS[k % 4])
    return _reading(rng)


def make_sample(split: str, family: str, k: int) -> Sample:
    """The ``k``-th sample of ``family`` in ``split`` (pure function of its arguments)."""
    _check_split(split)
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}; got {family!r}")
    if k < 0:
        raise ValueError(f"k must be >= 0; got {k}")
    scene, question, answer = _build(split, family, k)
    pair_id = f"{split}-existence-pair{k // 2:06d}" if family == "existence" else None
    answers = (answer,) * 10 if family == "reading" else (answer,)
    return Sample(id=f"{split}-{family}-{k:06d}", image=scene.img, question=question, answer=answer, answers=answers,
                  family=family, pair_id=pair_id)


def make_split(split: str, n: int, families=FAMILIES) -> list[Sample]:
    """``n`` samples of ``split`` ("train", "val" or "test"), cycling through ``families`` in order.

    Sample ``i`` is ``make_sample(split, families[i % F], i // F)``: deterministic, and a prefix of any longer
    list. Consecutive ``existence`` samples come in Yes/No pairs on the same image.
    """
    _check_split(split)
    families = tuple(families)
    if not families or any(f not in FAMILIES for f in families):
        raise ValueError(f"families must be a non-empty subset of {FAMILIES}; got {families!r}")
    if n < 0:
        raise ValueError(f"n must be >= 0; got {n}")
    return [make_sample(split, families[i % len(families)], i // len(families)) for i in range(n)]


def mme_rows(split: str, n: int) -> list[dict]:
    """``n`` rows (``n`` even) in lmms-eval's ``mme`` schema, from the ``existence`` family.

    Each image gets two consecutive rows, one answered "Yes" and one "No", with the same ``question_id`` (an
    image name, as in MME, whose scorer groups the two by it for acc+); ``category`` is ``"existence"``;
    questions end with " Please answer yes or no." like MME's own.
    """
    if n % 2:
        raise ValueError(f"n must be even (MME rows come in Yes/No pairs); got {n}")
    rows = []
    for s in make_split(split, n, families=("existence",)):
        rows.append({"question_id": f"synth/{s.pair_id}.png", "image": s.image, "question": s.question + MME_SUFFIX,
                     "answer": s.answer, "category": "existence"})
    return rows


def textvqa_rows(split: str, n: int) -> list[dict]:
    """``n`` rows in lmms-eval's ``textvqa_val`` schema (question_id, image, question, answers: 10 strings),
    from the ``reading`` family; ``question_id`` is the family index ``k``."""
    return [{k: v for k, v in row.items() if k != "family"} for row in vqa_rows(split, n, "reading")]


def vqa_rows(split: str, n: int, family: str) -> list[dict]:
    """``n`` rows of one ``family`` for the ``synth_vqa_<family>`` tasks: question_id (the family index ``k``),
    image, question, answers (the accepted answers) and family. Scored by ``is_correct``."""
    return [{"question_id": k, "image": s.image, "question": s.question, "answers": list(s.answers), "family": family}
            for k, s in enumerate(make_split(split, n, families=(family,)))]


def normalise(text: str) -> str:
    """Surrounding spaces and full stops off, lower case: how the suite compares answers."""
    return text.strip().strip(".").strip().lower()


def is_correct(generated: str, answers) -> bool:
    """Exact match of ``generated`` with one of the accepted ``answers``, after ``normalise``."""
    return normalise(generated) in {normalise(a) for a in answers}
