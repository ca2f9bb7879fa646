"""LLaVA-1.5 style models: a CLIP tower, a projector, and a Llama / Mistral / Qwen2 text backbone."""
from __future__ import annotations

import math

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
