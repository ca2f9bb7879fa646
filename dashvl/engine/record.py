"""The trace of a prefill: what the hooks keep while it runs, and the HaltTrace built from it on demand."""
from __future__ import annotations

import torch

from .. import policy
from ..trace import HaltTrace, build_spans, visual_runs

__all__ = ["TraceParts", "build_trace"]


class TraceParts:
    """What the activation-layer hook keeps of one prefill (device tensors, not yet copied).

    Attributes:
        scores: float32 [B, T]. active: bool [B, T] (the real tokens, when nothing halted).
        kinds: int8 [B, T], or None at ratio 0 (then worked out from ``token_ids``).
        token_ids: long [B, T] or None. grid_inputs: the adapter's ``trace_inputs`` of the call.
        number: counts prefills per handle, so a trace is rebuilt exactly when a new prefill ran.
    """

    __slots__ = ("scores", "active", "kinds", "token_ids", "grid_inputs", "number")

    def __init__(self, scores, active, kinds, token_ids, grid_inputs: dict, number: int):
        self.scores, self.active, self.kinds, self.token_ids = scores, active, kinds, token_ids
        self.grid_inputs, self.number = grid_inputs, number


def build_trace(parts: TraceParts, handle, vision) -> HaltTrace:
    """The HaltTrace of ``parts`` for ``handle`` (a DashHandle: model, adapter, config, layer, token ids),
    with ``vision`` (a VisionTrace or None)."""
    active = parts.active
    kinds = parts.kinds
    if kinds is None:  # a ratio-0 call
        kinds = handle.token_kinds(parts.token_ids, active)
    kinds = kinds.cpu()
    real = kinds != policy.KIND_PAD
    active = active.cpu() & real
    scores = parts.scores.cpu().masked_fill(~real, float("nan"))
    num_layers, ls = handle.num_layers, handle.layer
    per_layer = torch.cat([real.sum(1, keepdim=True).expand(-1, ls + 1),
                           active.sum(1, keepdim=True).expand(-1, num_layers - ls - 1)], 1)
    grids = handle.adapter.visual_grids(handle.model, parts.grid_inputs, [visual_runs(row) for row in kinds])
    c = handle.config
    return HaltTrace(layer=ls, num_layers=num_layers, ratio=c.ratio, kv=c.kv, scope=c.scope, method=c.method,
                     scores=scores, active=active, kinds=kinds, tokens_per_layer=per_layer,
                     spans=build_spans(kinds, grids), vision=vision)
