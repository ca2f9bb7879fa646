"""Targets of the auxiliary losses: what lies under each visual token's cell (colour, shape, word, letter)."""
from __future__ import annotations

import math

import torch

from .. import suite as synth

__all__ = ["cell_labels", "AUX_CLASSES", "N_LETTERS"]

_LETTER_EDGES: dict[str, list[float]] = {}


def _letter_edges(word: str) -> list[float]:
    """Where each letter of ``word.upper()`` starts and the last one ends, as fractions of the rendered text's
    width (the suite's font is proportional; its widths scale with the size, so one size settles the fractions)."""
    if word not in _LETTER_EDGES:
        font, text = synth._font(40), word.upper()
        total = font.getlength(text)
        _LETTER_EDGES[word] = [font.getlength(text[:k]) / total for k in range(len(text) + 1)]
    return _LETTER_EDGES[word]


def cell_labels(scene, rows: int, cols: int) -> torch.Tensor:
    """``[rows * cols, 4]`` (raster order, the order of the visual tokens the LLM receives: checked for Qwen2-VL's
    2×2 merge and LLaVA's grid): the colour, shape and word (index + 1; 0 = none) under each visual token's cell,
    and the letter (A = 1 … Z = 26; 0 = none) of that word at the cell centre's x, for word cells. Targets of the
    auxiliary losses on the visual tokens."""
    colours, words = list(synth.COLOURS), list(synth.WORDS)
    lab = torch.zeros(rows, cols, 4, dtype=torch.long)
    for c, s, (x0, y0, x1, y1) in scene.objects:
        r0, r1 = math.floor(y0 / scene.h * rows - 0.5) + 1, math.ceil(y1 / scene.h * rows - 0.5)
        c0, c1 = math.floor(x0 / scene.w * cols - 0.5) + 1, math.ceil(x1 / scene.w * cols - 0.5)
        if r0 < r1 and c0 < c1:
            lab[max(r0, 0):r1, max(c0, 0):c1, 0] = colours.index(c) + 1
            lab[max(r0, 0):r1, max(c0, 0):c1, 1] = synth.SHAPES.index(s) + 1
        else:  # smaller than a cell: the cell holding its centre
            r, cc = min(int((y0 + y1) / 2 / scene.h * rows), rows - 1), min(int((x0 + x1) / 2 / scene.w * cols), cols - 1)
            lab[r, cc, 0], lab[r, cc, 1] = colours.index(c) + 1, synth.SHAPES.index(s) + 1
    for w, (x0, y0, x1, y1) in scene.words:
        r0, r1 = int(y0 / scene.h * rows), max(int(y0 / scene.h * rows) + 1, math.ceil(y1 / scene.h * rows))
        c0, c1 = int(x0 / scene.w * cols), max(int(x0 / scene.w * cols) + 1, math.ceil(x1 / scene.w * cols))
        lab[r0:r1, c0:c1, 2] = words.index(w) + 1
        # the text spans the box less its padding (3-7 px, drawn at random: 5 assumed)
        edges, text = _letter_edges(w), w.upper()
        tx0, tw = x0 + 5, max(1.0, (x1 - x0) - 10)
        for cc in range(max(c0, 0), min(c1, cols)):
            f = ((cc + 0.5) / cols * scene.w - tx0) / tw
            if 0 <= f < 1:
                k = max(i for i in range(len(text)) if edges[i] <= f)
                lab[r0:r1, cc, 3] = ord(text[k]) - ord("A") + 1
    return lab.view(-1, 4)


AUX_CLASSES = (len(synth.COLOURS) + 1, len(synth.SHAPES) + 1, len(synth.WORDS) + 1)
N_LETTERS = 27  # the letter under a word cell's centre: none, A … Z
