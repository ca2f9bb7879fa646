"""kv="keep": the halted tokens' frozen hidden states, with their input norm's layer-independent part done once.

Every halted layer computes the halted tokens' keys/values from the same frozen hidden states, through its own
input RMS norm. The norm is ``weight ⊙ (x / rms(x))``: only ``weight`` depends on the layer. Done layer by layer,
the ``x / rms(x)`` part is five full passes over the halted tokens' states in float32 per layer (at 16k tokens on
Qwen2-VL-7B, about 0.5 ms of an H100 per halted layer); here it is done once per call and each layer applies its
weight in the norm's own order, so the keys/values are bit for bit those of ``input_layernorm(hidden)``
(tests/test_keep_norm.py checks it for every family's norm). Norms not listed run whole, as before.
"""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["FrozenHidden", "input_norm", "SHARE"]

# False: every layer runs its whole norm (bench.gpu_keep times both in one process).
SHARE = True

# Norms computing ``weight * (x.float() * rsqrt(mean(x.float()²) + variance_epsilon)).to(x.dtype)``
# (transformers 5.24). A class whose forward changed would fail tests/test_keep_norm.py, not run wrong silently.
_WEIGHT_AFTER_CAST = frozenset({"LlamaRMSNorm", "MistralRMSNorm", "Qwen2RMSNorm", "Qwen2VLRMSNorm",
                                "Qwen2_5_VLRMSNorm", "Qwen3RMSNorm", "Qwen3VLTextRMSNorm"})
# ``(x.float() * rsqrt(mean(x.float()²) + eps) * (1 + weight.float())).type_as(x)``: Gemma 3.
_ONE_PLUS_WEIGHT = frozenset({"Gemma3RMSNorm"})


def _kind(norm: nn.Module):
    """(kind, eps) of a norm whose layer-independent part can be shared, else None."""
    name = type(norm).__name__
    if name in _WEIGHT_AFTER_CAST and hasattr(norm, "variance_epsilon"):
        return "weight_after_cast", float(norm.variance_epsilon)
    if name in _ONE_PLUS_WEIGHT and hasattr(norm, "eps"):
        return "one_plus_weight", float(norm.eps)
    return None


class FrozenHidden:
    """The halted tokens' frozen hidden states [B, H, d] and, per (norm kind, eps, device), their normalised form,
    computed on first use. One instance per call (or per graph capture): it holds no weights."""

    def __init__(self, hidden: torch.Tensor):
        self.hidden = hidden
        self._scaled: dict = {}

    def scaled(self, kind: str, eps: float, device: torch.device) -> torch.Tensor:
        key = (kind, eps, device)
        if key not in self._scaled:
            x = self.hidden.to(device).float()
            x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
            self._scaled[key] = x.to(self.hidden.dtype) if kind == "weight_after_cast" else x
        return self._scaled[key]


def input_norm(norm: nn.Module, frozen: "FrozenHidden | torch.Tensor", device: torch.device) -> torch.Tensor:
    """``norm(hidden)`` for the frozen states, sharing the layer-independent part where the norm is known."""
    if not isinstance(frozen, FrozenHidden):
        return norm(frozen.to(device))
    kind = _kind(norm) if SHARE else None
    if kind is None:
        return norm(frozen.hidden.to(device))
    scaled = frozen.scaled(*kind, device)
    if kind[0] == "weight_after_cast":
        return norm.weight * scaled
    return (scaled * (1.0 + norm.weight.float())).type_as(frozen.hidden)
