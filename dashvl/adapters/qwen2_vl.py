"""Qwen2-VL and Qwen2.5-VL: dynamic image grids, 2x2 patch merge, M-RoPE already combined in cos/sin."""
from __future__ import annotations

import torch
from torch import nn

from .base import Adapter, ImageGrid


class Qwen2VLAdapter(Adapter):
    model_types = ("qwen2_vl", "qwen2_5_vl")

    def language_model(self, model: nn.Module) -> nn.Module:
        return model.model.language_model

    def vision_tower(self, model):
        return model.model.visual

    def vision_spec(self, model):
        from ..vision import VisionSpec
        visual = self.vision_tower(model)
        order = _window_order(visual) if model.config.model_type == "qwen2_5_vl" else None
        return VisionSpec(tower=visual, blocks=visual.blocks, attention="attn", layout="packed",
                          merge=visual.spatial_merge_size, order=order)

    def image_token_id(self, model):
        return model.config.image_token_id

    def video_token_id(self, model):
        return model.config.video_token_id

    def trace_inputs(self, call_kwargs):
        # generate() runs the vision tower before the model call and passes M-RoPE position ids instead of
        # the grid sizes; a direct forward() passes the grid sizes.
        return {k: call_kwargs[k] for k in ("image_grid_thw", "video_grid_thw", "position_ids")
                if call_kwargs.get(k) is not None}

    def visual_grids(self, model, inputs, runs) -> list[list[ImageGrid]]:
        if "image_grid_thw" in inputs or "video_grid_thw" in inputs:
            return _grids_from_thw(inputs, runs, model.config.vision_config.spatial_merge_size)
        if "position_ids" in inputs and inputs["position_ids"].dim() == 3:
            return _grids_from_positions(inputs["position_ids"], runs)
        return [[] for _ in runs]


def _grids_from_thw(inputs, runs, merge: int) -> list[list[ImageGrid]]:
    """Grids come in batch order, images and videos in separate lists; each item's t * (h / merge) * (w / merge)
    tokens are raster-ordered, in one run or, for a Qwen3-VL video, in one run per temporal patch with a text
    timestamp between them (the item's remaining tokens are then owed by the next runs of its kind)."""
    pending = {}
    for kind in ("image", "video"):
        thw = inputs.get(f"{kind}_grid_thw")
        pending[kind] = [] if thw is None else [(int(t), int(h) // merge, int(w) // merge) for t, h, w in thw.tolist()]
    out = []
    for row_runs in runs:
        items, owed = [], {"image": 0, "video": 0}
        for kind, _, n in row_runs:
            paid = min(n, owed[kind])  # the rest of an item begun in an earlier run
            owed[kind] -= paid
            n -= paid
            while n > 0 and pending[kind]:  # one run can hold several adjacent items
                t, h, w = pending[kind].pop(0)
                items.append((kind, t, h, w))
                n -= t * h * w
            owed[kind] += max(0, -n)
        out.append(items)
    return out


def _grids_from_positions(position_ids: torch.Tensor, runs) -> list[list[ImageGrid]]:
    """M-RoPE ids [3 or 4, B, T] give each visual token its (t, h, w) index: count distinct values per run."""
    pos = position_ids[-3:].cpu()
    out = []
    for row, row_runs in enumerate(runs):
        items = []
        for kind, start, n in row_runs:
            t, h, w = (int(pos[a, row, start:start + n].unique().numel()) for a in range(3))
            if t * h * w == n:
                items.append((kind, t, h, w))
        out.append(items)
    return out


def _window_order(visual):
    """Qwen2.5-VL runs its blocks on patches regrouped by attention window: the permutation, per patch."""
    from transformers.vision_utils import get_vision_window_index

    unit = visual.spatial_merge_size ** 2

    def order(grid_thw: torch.Tensor) -> torch.Tensor:
        window_index, _ = get_vision_window_index(grid_thw, spatial_merge_size=visual.spatial_merge_size,
                                                  window_size=visual.window_size, patch_size=visual.patch_size)
        window_index = window_index.to(grid_thw.device)
        return (window_index[:, None] * unit + torch.arange(unit, device=grid_thw.device)).flatten()

    return order
