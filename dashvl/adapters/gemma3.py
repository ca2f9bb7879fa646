"""Gemma 3 text models (Gemma3ForCausalLM, ``gemma3_text``: Gemma-3-270M / 1B): sliding-window layers
(window 512 in gemma-3-270m) interleaved with global ones, each kind with its own rotary embedding (local
theta 10k, global 1M), per-head q/k norms, and norms after attention and MLP.

What the engine needs from it: which layers slide (``layer_windows``, from ``config.layer_types``), which
rotary embedding each layer takes and how to compute it for given positions (the stack computes one per kind
and hands each layer its own, so the halted region cannot take the first halted layer's for all). The q/k norms
are handled by the base adapter; the activation layer's Δ is the attention's output before
``post_attention_layernorm`` (after that RMS norm every token's update has about the same norm).
"""
from __future__ import annotations

import torch
from torch import nn

from .base import Adapter


class Gemma3TextAdapter(Adapter):
    model_types = ("gemma3_text",)
    text_only = True

    def rope_kinds(self, model: nn.Module) -> list[str | None]:
        return list(self.text_config(model).layer_types)

    def rotary_embeddings(self, model: nn.Module, hidden: torch.Tensor, position_ids: torch.Tensor,
                          kinds: list[str]) -> dict:
        stack = self.language_model(model)
        return {kind: stack.rotary_emb(hidden, position_ids, kind) for kind in kinds}

    def check(self, model: nn.Module) -> None:
        if getattr(self.text_config(model), "use_bidirectional_attention", False):
            raise ValueError("Gemma 3 with use_bidirectional_attention=True (an encoder) is not supported: DASH "
                             "halts tokens of a causal decoder")
