"""Pure rendering of a HaltTrace: patch overlays, Δ heatmaps, a tokens-per-layer plot, highlighted tokens.

Every function takes a trace (and the picture the model saw, or the prompt's ids) and returns a new PIL
image, a matplotlib Figure or plain data; none keeps state or touches a model. Needs matplotlib
(``pip install dashvl[app]``). Figures are built without pyplot, so rendering is safe from worker threads.
"""
from __future__ import annotations

import dataclasses
import numbers
import os

import matplotlib
import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.figure import Figure
from PIL import Image, ImageDraw, ImageFont

from .flops import prefill_flops
from .policy import KIND_IMAGE, KIND_TEXT, KIND_VIDEO
from .trace import HaltTrace

__all__ = ["vision_overlay", "grid_box", "halted_overlay", "delta_heatmap", "tokens_per_layer_figure", "FlopsSummary",
           "flops_summary", "token_highlights", "HALTED", "ACTIVE", "IMAGE", "LABEL_COLOURS"]

HALTED, ACTIVE, IMAGE = "halted", "active", "image"
# Colours of the labels of ``token_highlights``, for gr.HighlightedText(color_map=...).
LABEL_COLOURS = {HALTED: "#d62728", ACTIVE: "#2ca02c", IMAGE: "#9e9e9e"}

_HALT_RGB = np.array([214, 39, 40], dtype=np.float32)
_OUTSIDE_RGB = np.array([235, 235, 235], dtype=np.float32)


def grid_box(size: tuple[int, int], crop: float | None = None) -> tuple[int, int, int, int]:
    """The pixel box ``(left, top, right, bottom)`` of a picture of ``size = (W, H)`` that an image's token
    grid covers.

    Args:
        crop: None: the whole picture. Qwen2-VL's processor resizes each side to a multiple of 28 px, so its
            grid spans the full extent at any aspect ratio (with a slight stretch). A float in (0, 1]: a
            centred square of side ``crop * min(W, H)``, what CLIP processors (LLaVA) keep: the short side
            is resized, then a centre crop of ``crop_size / shortest_edge`` of it is taken.
    """
    W, H = size
    if crop is None:
        return 0, 0, W, H
    if isinstance(crop, bool) or not isinstance(crop, numbers.Real) or not 0 < crop <= 1:
        raise ValueError(f"crop must be None (whole picture) or a number in (0, 1]; got {crop!r}")
    side = max(1, round(crop * min(W, H)))
    left, top = (W - side) // 2, (H - side) // 2
    return left, top, left + side, top + side


def halted_overlay(trace: HaltTrace, picture: Image.Image, image: int = 0, layer: int | None = None, *,
                   row: int = 0, crop: float | None = None, size: int = 448, frame: int = 0) -> Image.Image:
    """``picture`` with the tokens of ``image`` that ``layer`` did not process dimmed and tinted red.

    Args:
        trace: the prefill's HaltTrace.
        picture: the image as given to the processor (any size; only its aspect ratio matters).
        image: which image of row ``row`` (0 = the prompt's first).
        layer: decoder layer to show; None = the last one. Layers <= ``trace.layer`` processed every token.
        crop: where the grid lies on the picture, see ``grid_box``.
        size: the long side of the returned image in pixels (small pictures are enlarged for display).
        frame: temporal index of the grid (images have one).
    Returns:
        RGB image, ``size`` px on its long side; thin lines mark the token grid.
    """
    mask = trace.picture_mask(picture=image, layer=layer, row=row)
    return _tint_halted(mask, picture, crop=_crop_of(trace, image, row, crop), size=size, frame=frame)


def _crop_of(trace: HaltTrace, image: int, row: int, crop):
    """A stitched "tiles" grid (LLaVA-NeXT) covers the whole picture, whatever the processor's centre crop."""
    return None if trace.picture_span(image, row).role == "tiles" else crop


def vision_overlay(vision, picture: Image.Image, image: int = 0, *, crop: float | None = None, size: int = 448,
                   frame: int = 0) -> Image.Image:
    """``picture`` with the patches the vision tower halted at block v_s tinted red, on the patch grid.

    Args:
        vision: a ``dashvl.vision.VisionTrace`` (``handle.vision_trace`` or ``trace.vision``).
        Others as in ``halted_overlay``.
    """
    return _tint_halted(vision.patch_mask(image), picture, crop=crop, size=size, frame=frame)


def _tint_halted(mask: torch.Tensor, picture: Image.Image, *, crop, size: int, frame: int) -> Image.Image:
    """Dim and tint the cells of ``mask`` (bool [t, h, w], True = halted) over the picture's grid box."""
    _check_frame(mask, frame)
    base = _fit(picture, size)
    box = grid_box(base.size, crop)
    rgb = np.asarray(base, dtype=np.float32)
    halted = _per_pixel(mask[frame].numpy(), box, base.size)
    # why dim *and* tint: dimming alone reads as "dark content", tint alone hides what was halted
    grey = rgb.mean(-1, keepdims=True)
    rgb = np.where(halted[..., None], 0.45 * grey + 0.55 * _HALT_RGB, rgb)
    rgb = _fade_outside(rgb, box)
    out = Image.fromarray(rgb.clip(0, 255).astype(np.uint8))
    _draw_grid(out, box, mask.shape[1:])
    return out


def delta_heatmap(trace: HaltTrace, picture: Image.Image, image: int = 0, *, row: int = 0,
                  crop: float | None = None, size: int = 448, frame: int = 0, cmap: str = "viridis",
                  alpha: float = 0.65) -> Image.Image:
    """Δ = ||U||₂ at the activation layer for each token of ``image``, blended over ``picture``.

    Colours are scaled from the image's smallest Δ (dark: halted first) to its largest; a colour bar with
    both values is drawn under the picture. Arguments as in ``halted_overlay``; ``alpha`` is the weight
    of the heatmap.

    Returns:
        RGB image, ``size`` px wide (plus the colour bar) for a landscape picture.
    """
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha must be in [0, 1]; got {alpha!r}")
    scores = trace.picture_scores(picture=image, row=row)
    crop = _crop_of(trace, image, row, crop)
    _check_frame(scores, frame)
    grid = scores[frame].numpy()
    lo, hi = float(np.nanmin(grid)), float(np.nanmax(grid))
    norm = (grid - lo) / (hi - lo) if hi > lo else np.zeros_like(grid)
    colours = colormaps[cmap](norm)[..., :3] * 255
    base = _fit(picture, size)
    box = grid_box(base.size, crop)
    rgb = np.asarray(base, dtype=np.float32)
    rows, cols = _token_index(box, base.size, grid.shape)
    inside = (rows >= 0)[:, None] & (cols >= 0)[None, :]
    heat = colours[rows.clip(0)[:, None], cols.clip(0)[None, :]]
    rgb = np.where(inside[..., None], (1 - alpha) * rgb + alpha * heat, rgb)
    rgb = _fade_outside(rgb, box)
    out = Image.fromarray(rgb.clip(0, 255).astype(np.uint8))
    _draw_grid(out, box, grid.shape)
    return _with_colour_bar(out, cmap, lo, hi)


def tokens_per_layer_figure(trace: HaltTrace, text_config=None, row: int = 0) -> Figure:
    """Bar chart of the tokens each decoder layer processed, split into text and visual tokens.

    Args:
        text_config: the language model's config (``model.config.get_text_config()``); when given, the
            title states the theoretical prefill FLOPs saved (``flops_summary``).
    Returns:
        a matplotlib Figure (not registered with pyplot).
    """
    _check_row(trace, row)
    L = trace.num_layers
    kinds, real = trace.kinds[row], trace.real[row]
    visual = (kinds == KIND_IMAGE) | (kinds == KIND_VIDEO)
    counts = {"text": [], "visual": []}
    for layer in range(L):
        processed = trace.active_at(layer)[row]
        counts["text"].append(int((processed & (kinds == KIND_TEXT)).sum()))
        counts["visual"].append(int((processed & visual).sum()))
    x = np.arange(L)
    fig = Figure(figsize=(6.4, 3.2), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    ax.bar(x, counts["visual"], color="#1f77b4", label="image / video tokens")
    ax.bar(x, counts["text"], bottom=counts["visual"], color="#ff7f0e", label="text tokens")
    ax.axhline(int(real.sum()), color="black", ls="--", lw=1, label="without DASH")
    ax.axvline(trace.layer + 0.5, color="#d62728", lw=1.5, label=f"halting after layer {trace.layer}")
    ax.set_xlabel("decoder layer")
    ax.set_ylabel("tokens processed")
    ax.set_xticks(x if L <= 32 else x[::max(1, L // 16)])
    ax.set_ylim(0, int(real.sum()) * 1.05 + 1)
    fig.legend(loc="outside lower center", ncols=4, fontsize=8, frameon=False)
    title = f"ratio {trace.ratio:g}, kv={trace.kv}, scope={trace.scope}"
    if text_config is not None:
        title += f"\n{flops_summary(text_config, trace, row).text}"
    ax.set_title(title, fontsize=10, pad=8)
    return fig


@dataclasses.dataclass(frozen=True)
class FlopsSummary:
    """Theoretical LLM prefill FLOPs of one row (``dashvl.flops``): without DASH, with DASH."""

    unmodified: int
    dash: int

    @property
    def saved(self) -> float:
        """Fraction of the FLOPs saved, in [0, 1)."""
        return 1 - self.dash / self.unmodified

    @property
    def speedup(self) -> float:
        return self.unmodified / self.dash

    @property
    def text(self) -> str:
        return (f"theoretical LLM prefill FLOPs: {_si(self.unmodified)} -> {_si(self.dash)} "
                f"({self.saved:.0%} saved, {self.speedup:.2f}x)")


def flops_summary(text_config, trace: HaltTrace, row: int = 0) -> FlopsSummary:
    """FLOPs of one row's prefill without and with DASH, from ``dashvl.flops.prefill_flops``."""
    _check_row(trace, row)
    return FlopsSummary(*prefill_flops(text_config, trace, row))


def token_highlights(trace: HaltTrace, input_ids: torch.Tensor, tokenizer, row: int = 0) -> list[tuple[str, str | None]]:
    """The prompt as ``(text, label)`` pairs for gr.HighlightedText (colours: ``LABEL_COLOURS``).

    Each text token is decoded on its own and labelled ``"halted"`` or ``"active"``; each image or video
    is one ``("[image 1: 8 of 16 tokens halted]", "image")`` entry. Padding is left out.

    Args:
        input_ids: long [B, T] (or [T] for row 0), the ids the trace was made from.
        tokenizer: anything with ``decode(list_of_ids)`` (``processor.tokenizer``).
    """
    _check_row(trace, row)
    ids = input_ids if input_ids.dim() == 2 else input_ids[None]
    if ids.shape[-1] != trace.kinds.shape[1]:
        raise ValueError(f"input_ids have {ids.shape[-1]} tokens but the trace has {trace.kinds.shape[1]}; "
                         "pass the ids of the prompt the trace was made from")
    ids = ids[row].tolist()
    kinds, active, real = trace.kinds[row].tolist(), trace.active[row].tolist(), trace.real[row].tolist()
    span_at = {int(s.positions[0]): s for s in trace.spans if s.row == row and len(s.positions)}
    out, t, T = [], 0, len(ids)
    while t < T:
        if not real[t]:
            t += 1
        elif kinds[t] == KIND_TEXT:
            out.append((tokenizer.decode([ids[t]]), ACTIVE if active[t] else HALTED))
            t += 1
        else:  # one entry for the whole visual run (or each image of it that the trace knows the grid of)
            end = t
            while end < T and kinds[end] == kinds[t]:
                end += 1
            span = span_at.get(t)
            if span is not None:
                end = t + len(span.positions)
            n = end - t
            halted = n - sum(active[t:end])
            name = f"{span.kind} {span.index + 1}" if span is not None else trace.kind_names[kinds[t]]
            out.append((f"[{name}: {halted} of {n} tokens halted]", IMAGE))
            t = end
    return out


# ----------------------------------------------------------------- helpers


def _check_row(trace: HaltTrace, row: int) -> None:
    B = trace.kinds.shape[0]
    if not 0 <= row < B:
        raise ValueError(f"row must be in [0, {B - 1}]; got {row}")


def _check_frame(grid: torch.Tensor, frame: int) -> None:
    if not 0 <= frame < grid.shape[0]:
        raise ValueError(f"frame must be in [0, {grid.shape[0] - 1}] for this grid; got {frame}")


def _fit(picture: Image.Image, size: int) -> Image.Image:
    """RGB copy of ``picture`` scaled so its long side is ``size`` px."""
    if size < 16:
        raise ValueError(f"size must be >= 16 px; got {size}")
    W, H = picture.size
    scale = size / max(W, H)
    return picture.convert("RGB").resize((max(1, round(W * scale)), max(1, round(H * scale))), Image.BICUBIC)


def _token_index(box, size, grid_hw) -> tuple[np.ndarray, np.ndarray]:
    """For every pixel row / column of a picture of ``size``, the grid row / column under it (-1: outside)."""
    (left, top, right, bottom), (W, H), (h, w) = box, size, grid_hw
    ys, xs = np.arange(H), np.arange(W)
    rows = np.floor((ys - top + 0.5) * h / (bottom - top)).astype(int)
    cols = np.floor((xs - left + 0.5) * w / (right - left)).astype(int)
    rows[(ys < top) | (ys >= bottom)] = -1
    cols[(xs < left) | (xs >= right)] = -1
    return rows.clip(-1, h - 1), cols.clip(-1, w - 1)


def _per_pixel(grid: np.ndarray, box, size) -> np.ndarray:
    """A bool [h, w] token grid spread over the box: bool [H, W], False outside the box."""
    rows, cols = _token_index(box, size, grid.shape)
    inside = (rows >= 0)[:, None] & (cols >= 0)[None, :]
    return inside & grid[rows.clip(0)[:, None], cols.clip(0)[None, :]]


def _fade_outside(rgb: np.ndarray, box) -> np.ndarray:
    """Wash out what the processor cropped away (the model never saw it)."""
    left, top, right, bottom = box
    H, W = rgb.shape[:2]
    if (left, top, right, bottom) == (0, 0, W, H):
        return rgb
    outside = np.ones((H, W), dtype=bool)
    outside[top:bottom, left:right] = False
    return np.where(outside[..., None], 0.3 * rgb + 0.7 * _OUTSIDE_RGB, rgb)


def _draw_grid(img: Image.Image, box, grid_hw) -> None:
    """Thin translucent lines between tokens (skipped when tokens would be under 4 px apart)."""
    left, top, right, bottom = box
    h, w = grid_hw
    if (right - left) / w < 4 or (bottom - top) / h < 4:
        return
    layer = Image.new("RGBA", img.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    for i in range(h + 1):
        y = min(top + round(i * (bottom - top) / h), bottom - 1)
        draw.line([(left, y), (right - 1, y)], fill=(255, 255, 255, 90))
    for j in range(w + 1):
        x = min(left + round(j * (right - left) / w), right - 1)
        draw.line([(x, top), (x, bottom - 1)], fill=(255, 255, 255, 90))
    img.paste(Image.alpha_composite(img.convert("RGBA"), layer).convert("RGB"))


def _with_colour_bar(img: Image.Image, cmap: str, lo: float, hi: float) -> Image.Image:
    """``img`` above a 28 px strip: the colour ramp between the labels 'Δ lo' and 'hi'."""
    W, H = img.size
    font = _font(12)
    left_label, right_label = f"Δ {lo:.3g}", f"{hi:.3g}"
    lw = int(ImageDraw.Draw(img).textlength(left_label, font=font)) + 8
    rw = int(ImageDraw.Draw(img).textlength(right_label, font=font)) + 8
    out = Image.new("RGB", (W, H + 28), "white")
    out.paste(img, (0, 0))
    ramp_w = max(W - lw - rw, 8)
    ramp = (colormaps[cmap](np.linspace(0, 1, ramp_w))[:, :3] * 255).astype(np.uint8)
    out.paste(Image.fromarray(np.repeat(ramp[None], 12, 0)), (lw, H + 8))
    draw = ImageDraw.Draw(out)
    draw.text((2, H + 7), left_label, fill="black", font=font)
    draw.text((lw + ramp_w + 4, H + 7), right_label, fill="black", font=font)
    return out


def _font(size: int) -> ImageFont.ImageFont:
    """DejaVu Sans from matplotlib's own files: PIL's built-in font has no 'Δ'."""
    return ImageFont.truetype(os.path.join(matplotlib.get_data_path(), "fonts", "ttf", "DejaVuSans.ttf"), size)


def _si(n: float) -> str:
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}FLOPs"
    return f"{n:.3g} FLOPs"
