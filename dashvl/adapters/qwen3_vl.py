"""Qwen3-VL: Qwen2-VL's image grids and 2x2 merge with 16-px patches, interleaved M-RoPE (already combined in
the cos/sin the layers get), per-head q/k norms (the base adapter's), and DeepStack.

DeepStack: the vision tower hands the language model features of some of its intermediate blocks, which the
stack adds to the visual tokens' hidden states after decoder layers 0 .. n-1 (n = len(deepstack_visual_indexes),
3 in Qwen3-VL-2B..32B). Those additions happen in the stock loop between layers; the halted region runs as one
module in that loop, so every addition must come at or below l_s: ``check_layer`` refuses l_s < n - 1. At
l_s = n - 1 the last addition lands on l_s's output before the region starts, so halted tokens keep the state
with it (what layer l_s + 1 would have received).
"""
from __future__ import annotations

from torch import nn

from .qwen2_vl import Qwen2VLAdapter


class Qwen3VLAdapter(Qwen2VLAdapter):
    model_types = ("qwen3_vl",)

    def vision_spec(self, model):
        raise ValueError("vision-tower halting (vision_ratio > 0) is not available for qwen3_vl: its DeepStack "
                         "reads features of intermediate vision blocks for every patch; use vision_ratio=0")

    def check_layer(self, model: nn.Module, layer: int) -> None:
        n = len(getattr(model.config.vision_config, "deepstack_visual_indexes", ()) or ())
        if layer < n - 1:
            raise ValueError(f"layer {layer} is below Qwen3-VL's DeepStack layers: its vision features are added "
                             f"to the hidden states after decoder layers 0..{n - 1}, which must all run on every "
                             f"token; use layer >= {n - 1}")
