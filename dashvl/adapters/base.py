"""What the engine needs to know about a model family, and the Llama-style defaults."""
from __future__ import annotations

import sys

import torch
from torch import nn

from .frozen_hidden import input_norm

__all__ = ["Adapter", "ImageGrid", "SUPPORTED_ATTENTION", "FLASH_ATTENTION", "encoder_tower_spec"]

# Attention backends the engine builds masks for. flex_attention / paged backends take block masks or
# packed layouts that the gathered layers would get wrong, so they are refused.
# FlashAttention 2, 3 and 4 share one integration in transformers (``flash_attention_forward`` and one mask
# function: a 2-D key-padding mask or None, varlen when padded), so dashvl's contract is the same for all three.
FLASH_ATTENTION = ("flash_attention_2", "flash_attention_3", "flash_attention_4")
SUPPORTED_ATTENTION = ("sdpa", "eager") + FLASH_ATTENTION

# (kind, t, h, w[, role]): kind "image" or "video", sizes in LLM tokens (after any merge); role as in
# dashvl.trace.VisualSpan ("whole" when left out)
ImageGrid = tuple


_TOWER_NAMES = {"clip_vision_model": "CLIP", "siglip_vision_model": "SigLIP"}


def encoder_tower_spec(tower: nn.Module, prefix: int, family: str | None = None, tower_type: str | None = None):
    """The ``dashvl.vision.VisionSpec`` of a CLIP / SigLIP-style tower: ``encoder.layers`` of ``self_attn`` blocks
    over a batch of images, ``prefix`` leading tokens (CLIP's class token) never halting. With ``tower_type``, a
    tower of another ``model_type`` is refused, naming ``family`` and what it supports."""
    from ..vision import VisionSpec
    if tower_type is not None and getattr(tower.config, "model_type", None) != tower_type:
        raise ValueError(f"halting inside {family}'s vision tower supports {_TOWER_NAMES[tower_type]} towers; this "
                         f"one is {tower.config.model_type!r}: use vision_ratio=0")
    encoder = tower.vision_model.encoder if hasattr(tower, "vision_model") else tower.encoder
    return VisionSpec(tower=tower, blocks=encoder.layers, attention="self_attn", layout="batched", prefix=prefix)


class Adapter:
    """Family knowledge for decoder-only Llama-style backbones (Llama, Qwen2, Mistral).

    Subclasses override what differs: where the decoder layers live, which ids are visual tokens and how
    visual tokens map onto image grids.
    """

    model_types: tuple[str, ...] = ()
    text_only = False  # a text LM: compress() takes its unset settings from dashvl.config.TEXT_DEFAULTS
    tiled_images = False  # a picture enters the vision tower as several tiles (LLaVA-NeXT's anyres)

    def text_config(self, model: nn.Module):
        return model.config.get_text_config(decoder=True)

    def language_model(self, model: nn.Module) -> nn.Module:
        """The decoder stack (embeddings -> layers -> norm) that holds ``.layers``."""
        return model.model

    def decoder_layers(self, model: nn.Module) -> nn.ModuleList:
        return self.language_model(model).layers

    def check(self, model: nn.Module) -> None:
        """Raise ValueError for a model of this family that the engine cannot serve correctly."""

    def check_layer(self, model: nn.Module, layer: int) -> None:
        """Raise ValueError when halting above decoder layer ``layer`` (the resolved l_s) cannot be exact."""

    def vision_tower(self, model: nn.Module) -> nn.Module | None:
        """The module that encodes images (None for text-only models)."""
        return None

    def vision_spec(self, model: nn.Module):
        """The vision tower's layout for halting inside it (``dashvl.vision.VisionSpec``)."""
        raise ValueError(f"{model.config.model_type!r} models have no vision tower: vision_ratio must be 0")

    def image_token_id(self, model: nn.Module) -> int | None:
        return None

    def video_token_id(self, model: nn.Module) -> int | None:
        return None

    def attention_blocks(self, call_kwargs: dict) -> torch.Tensor | None:
        """long [B, T] of a prompt's call: tokens with the same id >= 0 attend to each other in both directions
        (Gemma 3's images); -1 elsewhere. None: causal attention only (every other family)."""
        return None

    def trace_inputs(self, call_kwargs: dict) -> dict:
        """What of a model call's keyword arguments ``visual_grids`` needs later (kept by reference)."""
        return {}

    def visual_grids(self, model: nn.Module, inputs: dict, runs: list[list[tuple[str, int, int]]]) -> list[list[ImageGrid]]:
        """Grid of each visual item per batch row, in prompt order.

        Args:
            inputs: what ``trace_inputs`` kept of the call.
            runs: per row, ``(kind, start, length)`` of each maximal run of image or video tokens, in order.
        """
        return [[] for _ in runs]

    def sliding_window(self, model: nn.Module) -> int | None:
        """Window of sliding-window layers, or None. Halting is exact only while prompts fit in it."""
        cfg = self.text_config(model)
        if "sliding_attention" in (getattr(cfg, "layer_types", None) or ()):
            return getattr(cfg, "sliding_window", None) or 0
        return getattr(cfg, "sliding_window", None)

    def layer_windows(self, model: nn.Module) -> list[int | None]:
        """Per decoder layer, the sliding window of its attention (a query sees keys less than that many positions
        back), or None for full attention."""
        cfg = self.text_config(model)
        window = getattr(cfg, "sliding_window", None)
        types = getattr(cfg, "layer_types", None)
        if types:
            return [window if t == "sliding_attention" else None for t in types]
        return [window] * cfg.num_hidden_layers

    def rope_kinds(self, model: nn.Module) -> list[str | None]:
        """Per decoder layer, which rotary embedding it uses, when layers differ (Gemma 3: local and global
        ones); None for every layer when all share the call's ``position_embeddings``."""
        return [None] * self.text_config(model).num_hidden_layers

    def rotary_embeddings(self, model: nn.Module, hidden: torch.Tensor, position_ids: torch.Tensor,
                          kinds: list[str]) -> dict:
        """{rope kind: (cos, sin)} at ``position_ids`` for each of ``kinds`` (names ``rope_kinds`` uses)."""
        raise NotImplementedError(f"{type(self).__name__} uses one rotary embedding for every layer")

    def last_query_and_keys(self, attn: nn.Module, hidden: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                            last: torch.Tensor):
        """The attention inputs FastV needs: the query of one token per row (``last``, long [B]) and every
        token's key; ``window_queries_and_keys`` with one position per row."""
        return self.window_queries_and_keys(attn, hidden, cos, sin, last[:, None])

    def window_queries_and_keys(self, attn: nn.Module, hidden: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                                positions: torch.Tensor):
        """The queries of a few tokens per row and every token's key (FastV, SnapKV).

        Args:
            attn: the layer's attention module; hidden: [B, T, d], its (normed) input.
            cos, sin: [B or 1, T, head_dim]; positions: long [B, w], the positions whose queries are wanted.
        Returns:
            queries [B, heads, w, head_dim], keys [B, kv_heads, T, head_dim], both with RoPE applied.
        """
        B, T, d = hidden.shape
        w = positions.shape[1]
        rope = sys.modules[type(attn).__module__].apply_rotary_pos_emb
        h_q = hidden.gather(1, positions[..., None].expand(B, w, d))
        q = _normed(attn, "q_norm", attn.q_proj(h_q).view(B, w, -1, attn.head_dim).transpose(1, 2))
        k = _normed(attn, "k_norm", attn.k_proj(hidden).view(B, T, -1, attn.head_dim).transpose(1, 2))
        cos, sin = cos.expand(B, -1, -1), sin.expand(B, -1, -1)
        pick = positions[..., None].expand(B, w, cos.shape[-1])
        q, _ = rope(q, q, cos.gather(1, pick), sin.gather(1, pick))
        k, _ = rope(k, k, cos, sin)
        return q, k

    def value_norms(self, attn: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        """float32 [B, kv_heads, T]: the L2 norm of every token's value per KV head (``dash-q``)."""
        B, T, _ = hidden.shape
        v = _normed(attn, "v_norm", attn.v_proj(hidden).view(B, T, -1, attn.head_dim).transpose(1, 2))
        return v.float().norm(dim=-1)

    def halted_kv(self, decoder_layer: nn.Module, hidden: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
        """Keys and values that halted tokens contribute to ``decoder_layer`` (kv="keep").

        Args:
            hidden: [B, H, d] the halted tokens' frozen hidden states, or their ``FrozenHidden`` (the input
                norm's layer-independent part shared by every halted layer of the call).
            cos, sin: [B, H, head_dim] at their original positions.
        Returns:
            keys, values: [B, kv_heads, H, head_dim], RoPE applied as the layer's own attention does.
        """
        attn = decoder_layer.self_attn
        device = attn.k_proj.weight.device  # the decoder layer may sit on another device than l_s (device_map)
        cos, sin = cos.to(device), sin.to(device)
        x = input_norm(decoder_layer.input_layernorm, hidden, device)
        B, H, _ = x.shape
        k = _normed(attn, "k_norm", attn.k_proj(x).view(B, H, -1, attn.head_dim).transpose(1, 2))
        v = attn.v_proj(x).view(B, H, -1, attn.head_dim).transpose(1, 2)
        # The family's own rotary function, from the module that defines its attention; an empty query (no heads)
        # so that it rotates the keys alone.
        rope = sys.modules[type(attn).__module__].apply_rotary_pos_emb
        _, k = rope(k[:, :0], k, cos, sin)
        return k, v


def _normed(attn: nn.Module, name: str, x: torch.Tensor) -> torch.Tensor:
    """Queries / keys [B, heads, n, head_dim] through the attention's per-head norm where it has one (Gemma 3,
    Qwen3: ``q_norm`` / ``k_norm``, applied before RoPE as their attention does)."""
    norm = getattr(attn, name, None)
    return norm(x) if norm is not None else x
