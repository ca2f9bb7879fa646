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

import math

import torch
from torch import nn

from .base import Adapter, encoder_tower_spec


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


class Gemma3Adapter(Gemma3TextAdapter):
    """Gemma 3 with images (``Gemma3ForConditionalGeneration``): the text model above, a SigLIP tower whose
    patches are average-pooled to ``mm_tokens_per_image`` tokens per image (a square grid), and one more rule in
    the prompt's attention: an image's tokens see each other in both directions (``token_type_ids`` mark them),
    in full-attention layers and within the window of sliding ones. The halted layers keep that rule
    (``attention_blocks``): an active image token sees the later tokens of its image too, and with kv="keep" their
    frozen keys."""

    model_types = ("gemma3",)
    text_only = False

    def language_model(self, model: nn.Module) -> nn.Module:
        return model.model.language_model

    def vision_tower(self, model):
        return model.model.vision_tower

    def vision_spec(self, model):
        return encoder_tower_spec(self.vision_tower(model), 0)  # SigLIP: no class token

    def image_token_id(self, model):
        return model.config.image_token_id

    def attention_blocks(self, call_kwargs: dict):
        types = call_kwargs.get("token_type_ids")
        if types is None:
            return None
        from transformers.models.gemma3.modeling_gemma3 import get_block_sequence_ids_for_mask
        return get_block_sequence_ids_for_mask(types, device=types.device)

    def visual_grids(self, model, inputs, runs):
        n_image = model.config.mm_tokens_per_image
        side = math.isqrt(n_image)
        out = []
        for row_runs in runs:
            items = []
            for kind, _, n in row_runs:
                if kind != "image" or side * side != n_image or n % n_image:
                    items = []  # no grid rather than a wrong one
                    break
                items += [("image", 1, side, side)] * (n // n_image)
            out.append(items)
        return out
