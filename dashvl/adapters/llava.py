"""LLaVA-1.5 style models: a CLIP tower, a projector, and a Llama / Mistral / Qwen2 text backbone."""
from __future__ import annotations

import math

import torch
from torch import nn

from .base import Adapter, ImageGrid

TEXT_BACKBONES = ("llama", "mistral", "qwen2")


class LlavaAdapter(Adapter):
    model_types = ("llava",)

    def language_model(self, model: nn.Module) -> nn.Module:
        return model.model.language_model

    def check(self, model):
        text_type = model.config.text_config.model_type
        if text_type not in TEXT_BACKBONES:
            raise ValueError(f"LLaVA with a {text_type!r} text model is not supported; "
                             f"supported text backbones: {', '.join(TEXT_BACKBONES)}")

    def vision_tower(self, model):
        return model.model.vision_tower

    def vision_spec(self, model):
        from ..vision import VisionSpec
        tower = self.vision_tower(model)
        if getattr(tower.config, "model_type", None) != "clip_vision_model":
            raise ValueError(f"halting inside LLaVA's vision tower supports CLIP towers; this one is "
                             f"{tower.config.model_type!r}: use vision_ratio=0")
        encoder = tower.vision_model.encoder if hasattr(tower, "vision_model") else tower.encoder
        return VisionSpec(tower=tower, blocks=encoder.layers, attention="self_attn",
                          layout="batched", prefix=1)

    def image_token_id(self, model):
        return model.config.image_token_id

    def visual_grids(self, model, inputs, runs) -> list[list[ImageGrid]]:
        # A fixed square grid per image: (image_size / patch_size)^2 tokens, CLS dropped ("default").
        vision = model.config.vision_config
        side = vision.image_size // vision.patch_size
        if model.config.vision_feature_select_strategy != "default":
            return [[] for _ in runs]  # CLS kept in the sequence: no square grid to draw
        out = []
        for row_runs in runs:
            items = []
            for _, _, n in row_runs:
                if n % (side * side) == 0:  # one or more adjacent full grids
                    items += [("image", 1, side, side)] * (n // (side * side))
                elif math.isqrt(n) ** 2 == n:  # one pooled grid (dashvl.baselines.downsample)
                    items.append(("image", 1, math.isqrt(n), math.isqrt(n)))
            out.append(items)
        return out


class LlavaNextAdapter(LlavaAdapter):
    """LLaVA-NeXT (``LlavaNextForConditionalGeneration``): LLaVA-1.5's layout plus "anyres" images. Each image is
    a base tile (the whole picture at the tower's resolution) and a grid of high-resolution tiles, which the model
    stitches, crops back to the picture's aspect ratio ("unpadding") and closes row by row with an image-newline
    embedding. In the language model all of them are image-token positions: base, then the stitched grid row by
    row, each row ending in its newline token. The trace shows each image as two grids, in that order: the base
    tile [1, s, s] and the high-resolution grid [1, h, w + 1], whose last column is the newline tokens."""

    model_types = ("llava_next",)
    tiled_images = True

    def trace_inputs(self, call_kwargs: dict) -> dict:
        # a direct forward passes the images' sizes; generate() encodes the images first and passes the packed
        # features instead (``mm_encoder_outputs``), whose newline tokens give each image's grid back
        sizes = call_kwargs.get("image_sizes")
        if sizes is not None:
            return {"image_sizes": sizes}
        encoded = (call_kwargs.get("mm_encoder_outputs") or {}).get("image")
        return {"image_features": encoded.pooler_output} if encoded is not None else {}

    def layouts_from_features(self, model, features) -> list[tuple[tuple, tuple] | None]:
        """Per packed image feature [n, d] (base tile, then the stitched grid with a newline closing each row):
        its two grids, read from where the newline embedding sits; None where the features do not have that
        layout."""
        vision = model.config.vision_config
        side = vision.image_size // vision.patch_size
        newline = model.model.image_newline
        out = []
        for f in features:
            rest = f[side * side:]
            is_newline = (rest == newline.to(rest)).all(-1).cpu()
            h = int(is_newline.sum())
            if h == 0 or len(rest) % h:
                out.append(None)
                continue
            width = len(rest) // h
            ends = (torch.arange(len(rest)) % width) == width - 1
            out.append(((1, side, side), (1, h, width)) if torch.equal(is_newline, ends) else None)
        return out

    def image_layouts(self, model, image_sizes) -> list[tuple[tuple, tuple]]:
        """Per image (``image_sizes`` [N, 2], height and width): the base tile's grid (1, s, s) and the stitched
        grid (1, h, w + 1), in LM tokens."""
        from transformers.models.llava_next.modeling_llava_next import get_anyres_image_grid_shape, unpad_image

        vision = model.config.vision_config
        side = vision.image_size // vision.patch_size
        out = []
        for size in image_sizes.tolist():
            rows, cols = get_anyres_image_grid_shape(size, model.config.image_grid_pinpoints, vision.image_size)
            # transformers' own cropping, on an empty stand-in of the stitched grid, gives its unpadded shape
            h, w = unpad_image(torch.empty(0, rows * side, cols * side), torch.tensor(size)).shape[1:]
            out.append(((1, side, side), (1, h, w + 1)))
        return out

    def visual_grids(self, model, inputs, runs) -> list[list[ImageGrid]]:
        layouts = None
        if model.config.vision_feature_select_strategy == "default":  # else CLS tokens stay in the sequence
            if "image_sizes" in inputs:
                layouts = self.image_layouts(model, inputs["image_sizes"])
            elif "image_features" in inputs:
                layouts = self.layouts_from_features(model, inputs["image_features"])
        if layouts is None or None in layouts:
            return [[] for _ in runs]  # no grid rather than a wrong one
        out, image = [], 0
        for row_runs in runs:
            items = []
            for _, _, n in row_runs:
                while n > 0 and image < len(layouts):  # adjacent images share one run of image tokens
                    base, tiles = layouts[image]
                    count = math.prod(base) + math.prod(tiles)
                    if count > n:
                        break
                    items += [("image",) + base + ("base",), ("image",) + tiles + ("tiles",)]
                    n -= count
                    image += 1
                if n:  # tokens the layouts do not account for: no grid rather than a wrong one
                    items = []
                    break
            out.append(items)
        return out
