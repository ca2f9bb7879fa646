"""InternVL (``InternVLForConditionalGeneration``): an InternViT tower whose patch grid is pixel-shuffled 2x2 into
the LLM's tokens, a projector, and a Qwen2 / Llama text model. A picture is cut into tiles (crops on a grid chosen
by its aspect ratio) plus, when there is more than one tile, a thumbnail of the whole picture, last; each is
``image_seq_length`` tokens between ``<img>`` and ``</img>``, row-major over the shuffled grid."""
from __future__ import annotations

import math

from .base import ImageGrid
from .llava import LlavaAdapter


class InternVLAdapter(LlavaAdapter):
    """LLaVA's stack, tower and image token; its own tiles and (no) vision-tower halting."""

    model_types = ("internvl",)
    family = "InternVL"
    tiled_images = True

    def vision_spec(self, model):
        raise ValueError("halting inside InternVL's vision tower is not supported (its tiles are pixel-shuffled "
                         "2x2 after the tower, so a halted patch would leave a hole in a merged token): "
                         "use vision_ratio=0")

    def visual_grids(self, model, inputs, runs) -> list[list[ImageGrid]]:
        # Each picture is its own run (<img> and </img> are text tokens around it): its crops, each a square
        # grid (role "crop"), then the thumbnail (role "whole": the grid drawn over the picture); one tile alone
        # is the whole picture.
        side = math.isqrt(model.config.image_seq_length)
        if side * side != model.config.image_seq_length:
            return [[] for _ in runs]
        out = []
        for row_runs in runs:
            items = []
            for kind, _, n in row_runs:
                if kind != "image" or n % (side * side):
                    items = []  # a layout this adapter does not know: no grid rather than a wrong one
                    break
                tiles = n // (side * side)
                crops = tiles - 1 if tiles > 1 else 0
                items += [("image", 1, side, side, "crop")] * crops + [("image", 1, side, side)]
            out.append(items)
        return out
