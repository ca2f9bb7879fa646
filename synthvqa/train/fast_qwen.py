"""Qwen2-VL training without transformers' per-image and per-row loops (the same numbers, faster)."""
from __future__ import annotations

import torch

__all__ = ["PACKED_VISION_ATTENTION", "packed_vision_sdpa", "use_packed_vision_attention", "qwen_fast_forward"]

# Qwen2-VL's vision attention loops over the images of a batch (one SDPA call per image, after a ``.tolist()``) unless
# the attention implementation's name contains "flash": then it makes one call with ``cu_seq_lens_q``. Training
# registers this function under such a name for the vision tower only: the images padded to one batch, one SDPA call
# with a key-padding mask (the same result as the per-image calls: checked in float32). Never saved: the model's
# config is set back to "sdpa" before saving.
PACKED_VISION_ATTENTION = "flash_packed_sdpa_dashvl_train"
_PACK_INDEX: dict = {}


def packed_vision_sdpa(module, query, key, value, attention_mask=None, dropout: float = 0.0, scaling=None,
                       cu_seq_lens_q=None, max_length_q=None, **kwargs):
    """``query`` etc. ``[1, heads, tokens, dim]`` holding the images' patches back to back (``cu_seq_lens_q``);
    returns ``[1, tokens, heads, dim]`` as the flash implementations do: attention within each image only."""
    cu = cu_seq_lens_q
    n, length, heads, dim = cu.numel() - 1, query.shape[2], query.shape[1], query.shape[3]
    longest = int(max_length_q)
    cached = _PACK_INDEX.get("last")
    if cached is None or cached[0] is not cu or cached[1] != longest:  # built once per forward (all layers share cu)
        sizes = (cu[1:] - cu[:-1]).long()
        img = torch.repeat_interleave(torch.arange(n, device=cu.device), sizes, output_size=length)
        flat = img * longest + torch.arange(length, device=cu.device) - cu[:-1].long()[img]
        mask = (torch.arange(longest, device=cu.device)[None, :] < sizes[:, None])[:, None, None, :]
        _PACK_INDEX["last"] = cached = (cu, longest, flat, mask)
    _, _, flat, mask = cached

    def padded(x):  # [1, heads, tokens, dim] -> [images, heads, longest, dim], zeros past each image's end
        out = x.new_zeros(n * longest, heads, dim).index_copy(0, flat, x[0].transpose(0, 1))
        return out.view(n, longest, heads, dim).transpose(1, 2)

    out = torch.nn.functional.scaled_dot_product_attention(
        padded(query), padded(key), padded(value), attn_mask=mask, dropout_p=dropout, scale=scaling)
    return out.transpose(1, 2).reshape(n * longest, heads, dim).index_select(0, flat)[None], None


def use_packed_vision_attention(model) -> None:
    """Qwen2-VL's vision tower: one attention call per layer for all the images of a batch (training only)."""
    from transformers import AttentionInterface

    AttentionInterface.register(PACKED_VISION_ATTENTION, packed_vision_sdpa)
    model.model.visual.config._attn_implementation = PACKED_VISION_ATTENTION


def qwen_fast_forward(model, batch: dict, grid_thw_cpu: torch.Tensor):
    """Qwen2-VL's forward with what the data workers precomputed: the vision tower's rotary positions,
    ``cu_seqlens`` and ``max_seqlen`` (no per-image loop, no ``.tolist()`` of GPU tensors), and the M-RoPE
    ``position_ids`` (no per-row ``get_rope_index``). The same computation as ``model(**batch)``."""
    pixel_values = batch.pop("pixel_values")
    vision = {"position_ids": batch.pop("vision_position_ids"), "cu_seqlens": batch.pop("cu_seqlens"),
              "max_seqlen": batch.pop("max_seqlen")}
    batch.pop("image_grid_thw", None)
    batch.pop("mm_token_type_ids", None)
    image = model.model.get_image_features(pixel_values, grid_thw_cpu, return_dict=True, **vision)
    return model(**batch, mm_encoder_outputs={"image": image})
