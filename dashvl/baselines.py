"""The pre-LLM baseline: fewer visual tokens by downsampling each image, at the same budget as halting.

Published comparisons on Qwen2-VL-7B found plain downsampling beating most pruning methods at high
reduction, so every DASH number should be read next to it. The in-LLM baselines ("random", "fastv") are
``compress(model, method=...)``; this one changes the inputs, so it wraps the processor:

    with dashvl.baselines.downsample(model, processor, ratio=0.75) as ds:
        inputs = ds.process(text=[prompt], images=[image], return_tensors="pt")
        model.generate(**inputs)

- Qwen2-VL / Qwen2.5-VL: each image is resized so the processor gives it about (1 - ratio) of the tokens
  it would otherwise get (its dynamic grid shrinks; the vision tower does less work too).
- LLaVA: the image size is fixed (336 px), so the projected s0 x s0 grid is average-pooled to s x s with
  s = round(s0 · sqrt(1 - ratio)), and the processor emits s² image tokens to match.
"""
from __future__ import annotations

import math

from torch import nn

from .adapters import adapter_for

__all__ = ["downsample", "Downsample"]


class Downsample:
    """A processor wrapper (and, for LLaVA, a pooling hook) giving (1 - ratio) of the visual tokens."""

    def __init__(self, model: nn.Module, processor, ratio: float):
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 <= ratio < 1:
            raise ValueError(f"ratio must be a number in [0, 1) (the fraction of visual tokens removed); got {ratio!r}")
        family = adapter_for(model).model_types[0]
        if family not in ("qwen2_vl", "llava"):
            raise ValueError(f"downsampling supports Qwen2-VL, Qwen2.5-VL and LLaVA models; got {model.config.model_type!r}")
        self.model, self.processor, self.ratio, self.family = model, processor, ratio, family
        self._hook = None
        self._patch_size = None
        if family == "llava" and ratio > 0:
            self._install_llava_pooling()

    def _install_llava_pooling(self):
        vision = self.model.config.vision_config
        side = vision.image_size // vision.patch_size
        target = max(1, round(side * math.sqrt(1 - self.ratio)))
        # the processor counts (image_size // patch_size)^2 tokens: find a patch size that gives target^2
        patch = next((p for p in range(vision.image_size // target, 0, -1) if vision.image_size // p == target), None)
        if patch is None:
            raise ValueError(f"cannot pool a {side}x{side} grid to {target}x{target}; try another ratio")
        self.side, self.target = side, target

        def pool(module, args, output):
            n, tokens, d = output.shape
            grid = output.transpose(1, 2).reshape(n, d, side, side)
            return nn.functional.adaptive_avg_pool2d(grid.float(), target).to(output.dtype).flatten(2).transpose(1, 2)

        self._hook = self.model.model.multi_modal_projector.register_forward_hook(pool)
        self._patch_size = self.processor.patch_size
        self.processor.patch_size = patch

    def resize(self, image):
        """The image the processor should see (Qwen2-VL: shrunk by sqrt(1 - ratio) per side)."""
        if self.family != "qwen2_vl" or self.ratio == 0:
            return image
        from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize
        ip = self.processor.image_processor
        factor = ip.patch_size * ip.merge_size
        h, w = smart_resize(image.height, image.width, factor=factor, min_pixels=ip.size["shortest_edge"],
                            max_pixels=ip.size["longest_edge"])
        scale = math.sqrt(1 - self.ratio)
        return image.resize((max(factor, round(w * scale)), max(factor, round(h * scale))))

    def process(self, text=None, images=None, **kwargs):
        """The processor's call, with every image downsampled."""
        if images is not None:
            images = [self.resize(im) for im in images]
        return self.processor(text=text, images=images, **kwargs)

    def remove(self):
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
            self.processor.patch_size = self._patch_size

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.remove()


def downsample(model: nn.Module, processor, ratio: float) -> Downsample:
    """Downsampling baseline removing ``ratio`` of each image's visual tokens before the LLM."""
    return Downsample(model, processor, ratio)
