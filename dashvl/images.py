"""Pictures as a person sees them: the one place where dashvl turns a file or a PIL image into RGB.

``to_rgb(img)`` applies the EXIF orientation (phone photos), scales high-bit-depth modes (16-bit grayscale
PNGs, 32-bit integer and float images) to 8 bits instead of clipping them, and composites transparency (alpha,
palette transparency) on ``BACKGROUND`` (white). ``open_rgb(path)`` opens a file and does the same. The viewer,
the terminal demo and the lmms-eval bridge all use these. ``for_qwen(img, image_processor)`` then sizes a picture
for a Qwen-VL processor the way Qwen's own examples do (``qwen_vl_utils.fetch_image`` at the processor's min/max
pixels and patch size).
"""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageOps

__all__ = ["BACKGROUND", "to_rgb", "open_rgb", "for_qwen"]

BACKGROUND = (255, 255, 255)  # what shows through transparent pixels

# the largest value of each high-bit-depth mode (float images are taken as 0..1 when they fit, else min..max)
_WIDE = {"I;16": 65535, "I;16B": 65535, "I;16L": 65535, "I;16N": 65535}


def _to_8bit(img: Image.Image) -> Image.Image:
    a = np.asarray(img)
    if img.mode in _WIDE:
        top = _WIDE[img.mode]
        lo = 0.0
    elif img.mode == "I":  # Pillow opens 16-bit PNGs as "I" too: its range is what the values need
        lo, top = 0.0, 65535.0 if a.max() <= 65535 else float(a.max())
        if a.min() < 0:
            lo = float(a.min())
    else:  # "F"
        lo, top = (0.0, 1.0) if a.min() >= 0 and a.max() <= 1 else (float(a.min()), float(a.max()))
    span = top - lo or 1.0
    return Image.fromarray(np.clip((a.astype(np.float64) - lo) / span * 255.0 + 0.5, 0, 255).astype(np.uint8))


def to_rgb(img: Image.Image) -> Image.Image:
    """An RGB copy of ``img`` as it should look: orientation, bit depth and transparency handled."""
    img = ImageOps.exif_transpose(img)
    if img.mode in _WIDE or img.mode in ("I", "F"):
        img = _to_8bit(img)
    if img.mode == "P":  # a palette may carry transparency: through RGBA so that it is composited
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "La", "RGBa", "PA"):
        rgba = img.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, BACKGROUND)
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    return img.convert("RGB")


def open_rgb(path) -> Image.Image:
    """Open and decode ``path`` with ``to_rgb``; PIL's errors pass through (the callers word them)."""
    with Image.open(path) as img:
        img.load()
        return to_rgb(img)


def for_qwen(img: Image.Image, image_processor) -> Image.Image:
    """``img`` (after ``to_rgb``) resized by ``qwen_vl_utils.fetch_image`` to what ``image_processor`` (a Qwen-VL
    one: ``patch_size``, ``merge_size``, min/max pixels) takes, as ``process_vision_info`` would; ImportError
    naming the package when qwen-vl-utils is not installed."""
    try:
        from qwen_vl_utils import fetch_image
    except ImportError as err:
        raise ImportError("preparing Qwen-VL images needs qwen-vl-utils: pip install qwen-vl-utils") from err
    size = getattr(image_processor, "size", None) or {}
    get = (lambda k: size.get(k)) if isinstance(size, dict) else (lambda k: getattr(size, k, None))
    lo = getattr(image_processor, "min_pixels", None) or get("min_pixels") or get("shortest_edge")
    hi = getattr(image_processor, "max_pixels", None) or get("max_pixels") or get("longest_edge")
    element = {"image": to_rgb(img)}
    if lo:
        element["min_pixels"] = int(lo)
    if hi:
        element["max_pixels"] = int(hi)
    return fetch_image(element, image_patch_size=int(image_processor.patch_size))
