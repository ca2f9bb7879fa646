"""Independent full-length references of dashvl's score methods, as plain functions (lower halts first).

``dashvl.methods`` runs SnapKV, StreamingLLM and Δ inside ``dashvl.compress`` (gathered, fast); these
functions compute the same ranks a second way, written separately, and ``longctx.masked.MaskedHalting`` runs
them at full length by masking. Tests hold the two to the same halted tokens and the same generated tokens.

Every function has the signature ``scores(attn, hidden, U, cos, sin, real, **options) -> float32 [B, T]``,
called at the activation layer l_s:

    attn: that layer's attention module (Llama-style: q_proj, k_proj, head_dim, scaling)
    hidden: [B, T, d], the attention's input (after input_layernorm)
    U: [B, T, d], the attention's output before the residual (what DASH scores)
    cos, sin: [B or 1, T, head_dim], the rotary embeddings the layer received
    real: bool [B, T], False at padding

"""
from __future__ import annotations

import sys

import torch
import torch.nn.functional as F

from dashvl.policy import delta_scores

__all__ = ["REFERENCES", "streamingllm_scores", "snapkv_scores", "dash_scores"]

_INF = float("inf")
# "keep if at all possible": finite, so such tokens still sort before the ineligible ones (which
# dashvl.policy.select_halted sets to +inf) when a high ratio must halt some of them
_KEEP = torch.finfo(torch.float32).max


def streamingllm_scores(attn, hidden, U, cos, sin, real, sinks: int = 4) -> torch.Tensor:
    """StreamingLLM as halting (Xiao et al. 2023): keep the first ``sinks`` real tokens (attention sinks)
    and the most recent ones; the oldest tokens after the sinks halt first. Content is not looked at."""
    order = (torch.cumsum(real.long(), 1) - 1).float()  # position among the row's real tokens
    return order.masked_fill((order < sinks) | ~real, _KEEP)


def snapkv_scores(attn, hidden, U, cos, sin, real, window: int = 32, kernel: int = 7,
                  values: bool = False) -> torch.Tensor:
    """SnapKV as halting (Li et al. 2024): the attention the last ``window`` real tokens (the observation
    window) pay each earlier token, summed over the window, averaged over heads, average-pooled along the
    sequence (``kernel``, odd) so neighbours of important tokens survive too. The window always stays.
    ``values``: each weight times the norm of that token's value in the head (dashvl's ``dash-q``).

    One ``[B, heads, window, T]`` attention block is formed (not ``T x T``), in float32.
    """
    if kernel % 2 != 1:
        raise ValueError(f"kernel must be odd (centred pooling); got {kernel}")
    B, T, d = hidden.shape
    w = min(window, T)
    pos = torch.arange(T, device=hidden.device)
    last = torch.where(real, pos, -1).max(1).values                               # [B]
    qpos = (last[:, None] - w + 1 + torch.arange(w, device=hidden.device)).clamp(min=0)  # [B, w]
    h_q = hidden.gather(1, qpos[..., None].expand(B, w, d))
    q = attn.q_proj(h_q).view(B, w, -1, attn.head_dim).transpose(1, 2)           # [B, H, w, hd]
    k = attn.k_proj(hidden).view(B, T, -1, attn.head_dim).transpose(1, 2)        # [B, KV, T, hd]
    cos, sin = cos.expand(B, -1, -1), sin.expand(B, -1, -1)
    rope = sys.modules[type(attn).__module__].apply_rotary_pos_emb  # the family's own rotary function
    pick = qpos[..., None].expand(B, w, cos.shape[-1])
    q, _ = rope(q, q, cos.gather(1, pick), sin.gather(1, pick))
    k, _ = rope(k, k, cos, sin)
    k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
    logits = (q.float() @ k.float().transpose(-1, -2)) * getattr(attn, "scaling", attn.head_dim ** -0.5)
    allowed = real[:, None, None, :] & (pos[None, None, None, :] <= qpos[:, None, :, None])
    attn_w = logits.masked_fill(~allowed, -_INF).softmax(-1)                       # [B, H, w, T]
    # window slots before a short row's first real token (padding) ask nothing: their rows are all masked
    attn_w = torch.where(real.gather(1, qpos)[:, None, :, None], attn_w, torch.zeros_like(attn_w))
    if values:
        v = attn.v_proj(hidden).view(B, T, -1, attn.head_dim).transpose(1, 2).float().norm(dim=-1)  # [B, KV, T]
        attn_w = attn_w * v.repeat_interleave(q.shape[1] // v.shape[1], dim=1)[:, :, None, :]
    votes = attn_w.sum(2).mean(1)                                                   # [B, T]
    pooled = F.avg_pool1d(votes[:, None], kernel, stride=1, padding=kernel // 2, count_include_pad=False)[:, 0]
    in_window = pos[None, :] > (last[:, None] - w)
    return pooled.masked_fill(in_window | ~real, _KEEP)


def dash_scores(attn, hidden, U, cos, sin, real) -> torch.Tensor:
    """Δ = ||U||₂, the DASH score itself (cross-checks ``MaskedHalting`` against ``dashvl.compress``)."""
    return delta_scores(U)


# the names evaluate.py takes: "<dashvl method>-masked"
REFERENCES = {"snapkv-masked": snapkv_scores, "streamingllm-masked": streamingllm_scores, "dash-masked": dash_scores}
