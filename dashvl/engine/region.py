"""The halted region (decoder layers l_s+1 .. L-1): gather, attention masks, scatter and the cache layout.

Halted-region layers keep a shorter cache. Which sequence position each of its key slots holds is kept per
cache object (``CacheLayout``), so decode steps and later turns get the right mask.
"""
from __future__ import annotations

import torch

__all__ = ["CacheLayout", "RegionInputs", "enter", "attention_mask", "gather_tokens", "scatter_active"]


class CacheLayout:
    """Layout of the halted-region cache layers of one cache object.

    Attributes:
        key_pos: long [B, K], the sequence position each key slot holds (-1: unused slot).
        all_valid: no unused slot.
    """

    __slots__ = ("key_pos", "all_valid")

    def __init__(self, key_pos: torch.Tensor, all_valid: bool):
        self.key_pos, self.all_valid = key_pos, all_valid


class RegionInputs:
    """What the halted region runs on in one call.

    Attributes:
        hidden: [B, A, d] the first halted layer's input (the gathered active tokens, or all of them).
        overrides: keyword arguments swapped into every halted-region layer (mask, cos/sin, position ids,
            and for kv="keep" without a cache of the call's own, the private cache ``FrozenKeys`` writes).
        frozen: [B, T, d] the hidden states leaving l_s (halted tokens keep them), when tokens halt in
            this call; else None.
        index, valid, all_valid: the plan's gather indices (long / bool [B, A]) and whether all slots are real.
    """

    __slots__ = ("hidden", "overrides", "frozen", "index", "valid", "all_valid")

    def __init__(self, hidden, overrides: dict, frozen=None, index=None, valid=None, all_valid: bool = True):
        self.hidden, self.overrides, self.frozen = hidden, overrides, frozen
        self.index, self.valid, self.all_valid = index, valid, all_valid

    def scatter(self, out: torch.Tensor) -> torch.Tensor:
        """The region's output [B, A, d] back in place among the frozen states: [B, T, d]."""
        return scatter_active(self.frozen, out, self.index, self.valid, self.all_valid)


def enter(plan, hidden: torch.Tensor, rotary, layouts, backend: str, cache_kw: str) -> RegionInputs | None:
    """Prepare the halted region of ``plan``'s call, whose first halted layer receives ``hidden`` [B, T, d]
    and ``rotary`` = (cos, sin) [B or 1, T, head_dim]. Records the cache layout in ``layouts`` (cache ->
    CacheLayout). None when nothing halted, now or earlier in this cache: the layers run as usual."""
    layout, compact = plan.layout, plan.active is not None
    if not compact and layout is None:
        return None
    B, T, past, device = plan.batch, plan.length, plan.past_length, hidden.device
    past_keys, past_valid = _past_keys(plan, device)
    overrides = {"position_ids": None}
    frozen_keys = plan.frozen_keys
    if compact:
        cos, sin = rotary
        frozen, hidden = hidden, gather_tokens(hidden, plan.index)
        overrides["position_embeddings"] = (gather_tokens(cos, plan.index), gather_tokens(sin, plan.index))
        q_pos = torch.where(plan.valid, plan.index + past, -1)
        new_keys, new_valid = q_pos, plan.all_valid
        if frozen_keys is not None:  # kv="keep": the halted tokens' key slots come first in every layer
            halted_pos, halted_valid = frozen_keys.gather(frozen, cos, sin, past)
            new_keys, new_valid = torch.cat([halted_pos, q_pos], 1), new_valid and halted_valid
            private = None if plan.graph else frozen_keys.attach(plan.cache)  # graph: its recorder carries them
            if private is not None:
                overrides[cache_kw] = private
    else:  # a call that halts nothing on a cache whose halted layers are short (decode steps)
        frozen = None
        positions = torch.arange(past, past + T, device=device).expand(B, T)
        q_pos = torch.where(plan.real, positions, -1) if T > 1 else positions
        new_keys, new_valid = q_pos, T == 1
    key_pos = torch.cat([past_keys, new_keys], 1) if past_keys is not None else new_keys
    keys_valid = past_valid and new_valid
    if plan.cache is not None:
        layouts[plan.cache] = CacheLayout(key_pos, keys_valid)
    overrides["attention_mask"] = attention_mask(key_pos, q_pos, keys_valid, past_keys is None, backend, hidden.dtype)
    return RegionInputs(hidden, overrides, frozen, plan.index, plan.valid, plan.all_valid)


def _past_keys(plan, device):
    """(long [B, past] positions of the key slots the halted layers' caches already hold, or None; all valid)."""
    if plan.layout is not None:
        return plan.layout.key_pos, plan.layout.all_valid
    past = plan.past_length
    if not past:
        return None, True
    # earlier turns halted nothing: the halted layers' caches are full length, padding included
    key_pos = torch.arange(past, device=device).expand(plan.batch, past)
    mask = plan.mask
    if plan.real is not None and mask is not None and mask.shape[1] == past + plan.length:
        return torch.where(mask[:, :past].bool(), key_pos, -1), False
    return key_pos, True


def attention_mask(key_pos, q_pos, keys_valid: bool, fresh: bool, backend: str, dtype):
    """Attention mask of the halted layers in ``backend``'s format, or None where plain causal is exact.

    Args:
        key_pos: long [B, K], the sequence position held by each key slot (-1: unused slot).
        q_pos: long [B, Q], the position of each query slot (-1: filler slot).
        keys_valid: no unused key slot. fresh: the cache held nothing before this call.
    Returns:
        None; bool [B, K] (flash); bool [B, 1, Q, K] (sdpa); or additive ``dtype`` [B, 1, Q, K] (eager).
    """
    Q, K = q_pos.shape[1], key_pos.shape[1]
    # A fresh kv="drop" prefill: keys are the query slots, in position order with fillers last
    # (policy.compact_index), so causal-over-slots is exact for every real query, padded rows included.
    slot_causal = fresh and Q == K
    if backend.startswith("flash"):
        # Queries are the last Q key slots (kv="drop"), so a 2-D key mask with causal alignment is exact.
        return None if keys_valid or slot_causal else key_pos >= 0
    if (keys_valid and Q == 1) or (slot_causal and backend == "sdpa"):
        return None  # decode against valid keys, or a fresh causal prefill: SDPA's is_causal / no mask
    key_ok = key_pos[:, None, :] >= 0
    allowed = key_ok & (key_pos[:, None, :] <= q_pos[:, :, None])
    allowed = torch.where((q_pos < 0)[:, :, None], key_ok, allowed)  # filler queries: any key, never NaN
    allowed = allowed[:, None]
    if backend == "sdpa":
        return allowed
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill_(
        ~allowed, torch.finfo(dtype).min)


def gather_tokens(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x [B or 1, T, d], index long [B, A] -> [B, A, d]."""
    B, A = index.shape
    return x.expand(B, -1, -1).gather(1, index[..., None].expand(B, A, x.shape[-1]))


def scatter_active(frozen: torch.Tensor, out: torch.Tensor, index: torch.Tensor, valid: torch.Tensor,
                   all_valid: bool) -> torch.Tensor:
    """``out`` [B, A, d] written into a copy of ``frozen`` [B, T, d] at ``index`` [B, A]; filler slots
    (``valid`` False) keep the frozen values."""
    out = out.to(frozen.device)  # a model split over devices (device_map) ends the stack elsewhere
    idx = index[..., None].expand_as(out)
    if not all_valid:
        out = torch.where(valid[..., None], out, frozen.gather(1, idx))
    return frozen.scatter(1, idx, out)
