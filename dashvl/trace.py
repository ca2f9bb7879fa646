"""HaltTrace: an immutable record of one prefill, with patch-grid views for visualisation."""
from __future__ import annotations

import dataclasses

import torch

from .policy import KIND_IMAGE, KIND_NAMES, KIND_PAD, KIND_TEXT, KIND_VIDEO

__all__ = ["HaltTrace", "VisualSpan"]


@dataclasses.dataclass(frozen=True)
class VisualSpan:
    """One image (or video) in one batch row.

    Attributes:
        row: batch row.
        kind: ``"image"`` or ``"video"``.
        index: position among the row's items of that kind (0 = first image of the prompt).
        grid: ``(t, h, w)`` in LLM tokens (Qwen2-VL: merged 2x2 patches; LLaVA: 24x24 for 336 px).
        positions: long [t * h * w], the sequence positions of its tokens in raster order (t, h, w).
        role: what of its picture the grid covers: ``"whole"`` (the picture, as most families encode it);
            LLaVA-NeXT encodes each picture twice: ``"base"`` (the whole picture at the tower's resolution)
            and ``"tiles"`` (the stitched high-resolution tiles, whose last column is the row-closing newline
            tokens, not a part of the picture); InternVL as ``"crop"`` grids (tiles of the picture, in the
            processor's order) and a ``"whole"`` thumbnail, last.
    """

    row: int
    kind: str
    index: int
    grid: tuple[int, int, int]
    positions: torch.Tensor
    role: str = "whole"


@dataclasses.dataclass(frozen=True)
class HaltTrace:
    """What DASH did in the last prefill. All tensors are on the CPU.

    Attributes:
        layer: the activation layer l_s; layers > l_s ran on active tokens only.
        num_layers: L, the number of decoder layers.
        ratio, kv, scope, method: the settings that produced it.
        scores: float32 [B, T], the score that ranked tokens at l_s (NaN at padding): Δ_t = ||U_t||_2 for
            ``method="dash"``; the uniform draw for "random"; the last token's attention for "fastv".
        active: bool [B, T], True for tokens processed above l_s; False for halted tokens and padding.
        kinds: int8 [B, T], KIND_TEXT / KIND_IMAGE / KIND_VIDEO / KIND_PAD (names in ``kind_names``).
        tokens_per_layer: long [B, L], real tokens each layer processed per row.
        spans: the images and videos of every row with the positions of their tokens.
        vision: what the vision tower halted (``dashvl.vision.VisionTrace``), when vision_ratio > 0.
    """

    layer: int
    num_layers: int
    ratio: float
    kv: str
    scope: str
    method: str
    scores: torch.Tensor
    active: torch.Tensor
    kinds: torch.Tensor
    tokens_per_layer: torch.Tensor
    spans: tuple[VisualSpan, ...]
    vision: object = None

    kind_names = KIND_NAMES

    @property
    def real(self) -> torch.Tensor:
        """bool [B, T]: False at padding."""
        return self.kinds != KIND_PAD

    @property
    def halted(self) -> torch.Tensor:
        """bool [B, T]: real tokens that stopped at l_s."""
        return self.real & ~self.active

    def active_at(self, layer: int) -> torch.Tensor:
        """bool [B, T]: tokens layer ``layer`` processed (padding excluded)."""
        if not 0 <= layer < self.num_layers:
            raise ValueError(f"layer must be in [0, {self.num_layers - 1}]; got {layer}")
        return self.real if layer <= self.layer else self.active

    def num_halted(self, kind: str | None = None) -> torch.Tensor:
        """long [B]: halted tokens per row, optionally of one kind ("text", "image", "video")."""
        halted = self.halted
        if kind is not None:
            halted = halted & (self.kinds == _kind_code(kind))
        return halted.sum(1)

    def span(self, image: int = 0, row: int = 0, kind: str = "image") -> VisualSpan:
        """The ``image``-th item of ``kind`` in batch row ``row``."""
        return _pick([s for s in self.spans if s.row == row and s.kind == kind], image, row, kind)

    def picture_spans(self, row: int = 0, kind: str = "image") -> list[VisualSpan]:
        """One grid per picture of row ``row``, in order: its only grid, LLaVA-NeXT's high-resolution
        ``"tiles"`` grid (the finer of its two; the ``"base"`` one is left out), or InternVL's thumbnail (its
        ``"crop"`` grids, each a part of the picture, are left out)."""
        return [s for s in self.spans if s.row == row and s.kind == kind and s.role not in ("base", "crop")]

    def picture_span(self, picture: int = 0, row: int = 0, kind: str = "image") -> VisualSpan:
        """The grid to draw over the ``picture``-th picture of row ``row`` (``picture_spans``)."""
        return _pick(self.picture_spans(row, kind), picture, row, kind)

    def patch_mask(self, image: int = 0, layer: int | None = None, row: int = 0, kind: str = "image") -> torch.Tensor:
        """bool [t, h, w]: True where that image's token was halted at ``layer`` (default: the last layer)."""
        return self._halted_on(self.span(image, row, kind), layer, row)

    def score_grid(self, image: int = 0, row: int = 0, kind: str = "image") -> torch.Tensor:
        """float32 [t, h, w]: Δ of that image's tokens at l_s, on its grid."""
        span = self.span(image, row, kind)
        return self.scores[row, span.positions].view(span.grid)

    def picture_mask(self, picture: int = 0, layer: int | None = None, row: int = 0,
                     kind: str = "image") -> torch.Tensor:
        """bool [t, h, w] over the ``picture``-th picture itself: ``patch_mask`` of ``picture_span``, without the
        newline column of a ``"tiles"`` grid. For families with one grid per picture it equals
        ``patch_mask(image=picture)``."""
        span = self.picture_span(picture, row, kind)
        return _without_newlines(span, self._halted_on(span, layer, row))

    def picture_scores(self, picture: int = 0, row: int = 0, kind: str = "image") -> torch.Tensor:
        """float32 [t, h, w]: ``score_grid`` of ``picture_span`` (without a ``"tiles"`` grid's newline column)."""
        span = self.picture_span(picture, row, kind)
        return _without_newlines(span, self.scores[row, span.positions].view(span.grid))

    def _halted_on(self, span: VisualSpan, layer: int | None, row: int) -> torch.Tensor:
        layer = self.num_layers - 1 if layer is None else layer
        return (~self.active_at(layer)[row, span.positions]).view(span.grid)


def _pick(items: list[VisualSpan], i: int, row: int, kind: str) -> VisualSpan:
    if not 0 <= i < len(items):
        raise ValueError(f"row {row} has {len(items)} {kind}(s); asked for {kind} {i}")
    return items[i]


def _without_newlines(span: VisualSpan, grid: torch.Tensor) -> torch.Tensor:
    """A ``"tiles"`` grid's values over the picture: its last column holds the row-closing newline tokens."""
    return grid[..., :-1] if span.role == "tiles" else grid


def _kind_code(kind: str) -> int:
    codes = {"text": KIND_TEXT, "image": KIND_IMAGE, "video": KIND_VIDEO, "pad": KIND_PAD}
    if kind not in codes:
        raise ValueError(f"kind must be one of {tuple(codes)}; got {kind!r}")
    return codes[kind]


def visual_runs(kinds_row: torch.Tensor) -> list[tuple[str, int, int]]:
    """Maximal runs of image / video tokens in one row: ``(kind, start, length)``."""
    runs, start = [], None
    values = kinds_row.tolist() + [KIND_TEXT]
    for t, k in enumerate(values):
        if start is not None and k != values[start]:
            runs.append((KIND_NAMES[values[start]], start, t - start))
            start = None
        if start is None and k in (KIND_IMAGE, KIND_VIDEO):
            start = t
    return runs


def build_spans(kinds: torch.Tensor, grids_per_row: list[list[tuple]]) -> tuple[VisualSpan, ...]:
    """Lay each row's grids over its visual runs, in order. ``kinds``: int8 [B, T] on the CPU."""
    spans = []
    for row in range(kinds.shape[0]):
        positions = [torch.arange(s, s + n) for _, s, n in visual_runs(kinds[row])]
        flat = torch.cat(positions) if positions else torch.zeros(0, dtype=torch.long)
        offset, counters = 0, {"image": 0, "video": 0}
        for kind, t, h, w, *role in grids_per_row[row]:  # role: see VisualSpan (default "whole")
            n = t * h * w
            if kind is None:  # visual tokens that belong to no grid (a video's closing newline)
                offset += n
                continue
            spans.append(VisualSpan(row, kind, counters[kind], (t, h, w), flat[offset:offset + n], *role))
            counters[kind] += 1
            offset += n
    return tuple(spans)
