"""The halted region (decoder layers l_s+1 .. L-1): gather, attention masks, scatter, the cache layout, and
the ``HaltedRunner`` that runs the region in place of its layers.

Halted-region layers keep a shorter cache. Which sequence position each of its key slots holds is kept per
cache object (``CacheLayout``), so decode steps and later turns get the right mask. Decode steps only count
their keys: positions are materialised when a mask or a later turn needs them.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import policy
from .keep_attention import KeepChunks
from .windows import effective_window

__all__ = ["CacheLayout", "HaltedRunner", "RegionInputs", "enter", "attention_mask", "step_mask", "gather_tokens",
           "scatter_active"]


class CacheLayout:
    """Layout of the halted-region cache layers of one cache object: K = ``length`` key slots per row.

    Decode steps append their keys as a count (``append``), so a step against all-valid keys does no tensor
    work; ``key_pos`` materialises the positions when a mask or a later turn needs them.

    Attributes:
        key_pos: long [B, K], the sequence position each key slot holds (-1: unused slot).
        batch, length: B and K. all_valid: no unused slot.
        last_mask: (backend, dtype, mask) of the latest decode step, which the next one extends by a column.
    """

    __slots__ = ("_key_pos", "_tail_start", "_tail", "batch", "length", "all_valid", "last_mask")

    def __init__(self, key_pos: torch.Tensor, all_valid: bool):
        self._key_pos, self.all_valid = key_pos, all_valid
        self.batch, self.length = key_pos.shape
        self._tail_start = self._tail = 0  # decode steps' keys not yet in _key_pos: positions start, start + 1, ...
        self.last_mask = None

    @property
    def key_pos(self) -> torch.Tensor:
        self._materialise()
        return self._key_pos

    def _materialise(self) -> None:
        if self._tail:
            start, n = self._tail_start, self._tail
            tail = torch.arange(start, start + n, device=self._key_pos.device).expand(self.batch, n)
            self._key_pos = torch.cat([self._key_pos, tail], 1)
            self._tail = 0

    def append(self, position: int) -> None:
        """A decode step adds every row's key at sequence ``position`` to the halted layers' caches."""
        if self._tail and position != self._tail_start + self._tail:
            self._materialise()  # not contiguous with the counted ones
        if not self._tail:
            self._tail_start = position
        self._tail += 1
        self.length += 1


def step_mask(layout: CacheLayout, backend: str, dtype, window: int | None = None, position: int = 0):
    """The halted layers' mask of a decode step (one query per row, after ``layout.append``), or None.

    Its query is the newest position, so it may see every valid key: the mask is the key validity, which is
    the previous step's mask and one more allowed column (one op per step instead of a rebuild). A layer with a
    sliding ``window`` whose query (at ``position``) reaches past it sees only the keys within it."""
    if window is not None and position >= window:
        key_pos = layout.key_pos
        q_pos = torch.full((layout.batch, 1), position, device=key_pos.device)
        return attention_mask(key_pos, q_pos, False, False, backend, dtype, window)
    if layout.all_valid:
        return None  # SDPA, flash and eager attend to every key of a one-token query
    last = layout.last_mask
    if last is not None and last[:2] == (backend, dtype) and last[2].shape[-1] == layout.length - 1:
        mask = F.pad(last[2], (0, 1), value=0.0 if last[2].is_floating_point() else True)
    else:
        key_pos = layout.key_pos
        mask = attention_mask(key_pos, key_pos[:, -1:], False, False, backend, dtype)  # the query: the last key
    layout.last_mask = (backend, dtype, mask)
    return mask


class RegionInputs:
    """What the halted region runs on in one call.

    Attributes:
        hidden: [B, A, d] the first halted layer's input (the gathered active tokens, or all of them).
        overrides: keyword arguments swapped into every halted-region layer (mask, cos/sin, position ids,
            and for kv="keep" without a cache of the call's own, the private cache ``FrozenKeys`` writes).
        by_layer: with layers of several kinds (``windows.RegionKinds``), per halted layer the mask and cos/sin
            of its kind, swapped in over ``overrides``; else None.
        frozen: [B, T, d] the hidden states leaving l_s (halted tokens keep them), when tokens halt in
            this call; else None.
        index, valid, all_valid: the plan's gather indices (long / bool [B, A]) and whether all slots are real.
    """

    __slots__ = ("hidden", "overrides", "frozen", "index", "valid", "all_valid", "by_layer", "fast_keep")

    def __init__(self, hidden, overrides: dict, frozen=None, index=None, valid=None, all_valid: bool = True,
                 by_layer=None, fast_keep: bool = False):
        self.hidden, self.overrides, self.frozen = hidden, overrides, frozen
        self.index, self.valid, self.all_valid = index, valid, all_valid
        self.by_layer = by_layer
        self.fast_keep = fast_keep  # the halted layers' "mask" is a KeepChunks for keep_attention

    def scatter(self, out: torch.Tensor) -> torch.Tensor:
        """The region's output [B, A, d] back in place among the frozen states: [B, T, d]."""
        return scatter_active(self.frozen, out, self.index, self.valid, self.all_valid)


def enter(plan, hidden: torch.Tensor, rotaries: dict, layouts, backend: str, cache_kw: str,
          kinds=None) -> RegionInputs | None:
    """Prepare the halted region of ``plan``'s call, whose first halted layer receives ``hidden`` [B, T, d].
    ``rotaries``: {rope kind: (cos, sin) [B or 1, T, head_dim]}; the key None when every halted layer takes the
    call's. ``kinds``: the halted layers' ``windows.RegionKinds``, or None (all alike). Records the cache layout
    in ``layouts`` (cache -> CacheLayout). None when nothing halted, now or earlier in this cache: the layers
    run as usual. A kv="keep" prompt on the fast path (``plan.fast_keep``) gets a ``KeepChunks`` for a mask (the
    graph path: the key positions it is built from)."""
    layout, compact = plan.layout, plan.active is not None
    if not compact and layout is None:
        return None
    B, T, past, device = plan.batch, plan.length, plan.past_length, hidden.device
    past_keys, past_valid = _past_keys(plan, device)
    overrides = {"position_ids": None}
    frozen_keys = plan.frozen_keys
    if compact:
        frozen, hidden, whole = hidden, gather_tokens(hidden, plan.index), rotaries
        rotaries = {kind: (gather_tokens(cos, plan.index), gather_tokens(sin, plan.index))
                    for kind, (cos, sin) in whole.items()}
        q_pos = torch.where(plan.valid, plan.index + past, -1)
        new_keys, new_valid = q_pos, plan.all_valid
        if frozen_keys is not None:  # kv="keep": the halted tokens' key slots come first in every layer
            halted_pos, halted_valid = frozen_keys.gather(frozen, whole, past)
            new_keys, new_valid = torch.cat([halted_pos, q_pos], 1), new_valid and halted_valid
            private = None if plan.graph else frozen_keys.attach(plan.cache)  # graph: its recorder carries them
            if private is not None:
                overrides[cache_kw] = private
    else:  # a call that halts nothing on a cache whose halted layers are short (a later prompt)
        frozen = None
        positions = torch.arange(past, past + T, device=device).expand(B, T)
        q_pos = torch.where(plan.real, positions, -1) if T > 1 else positions
        new_keys, new_valid = q_pos, T == 1
    key_pos = torch.cat([past_keys, new_keys], 1) if past_keys is not None else new_keys
    keys_valid = past_valid and new_valid
    if plan.cache is not None:
        layouts[plan.cache] = CacheLayout(key_pos, keys_valid)
    fresh = past_keys is None

    blocks = None
    if plan.blocks is not None and T > 1:  # Gemma 3's images: their tokens see each other both ways
        blocks = (block_of(plan.blocks, q_pos, past), block_of(plan.blocks, key_pos, past))

    chunks = None
    if compact and plan.fast_keep:  # the graph path builds its KeepChunks inside the graph, from key_pos
        chunks = key_pos if plan.graph else KeepChunks(key_pos, q_pos.shape[1], backend)

    def mask(window=None):
        if chunks is not None:  # by rank, no mask (flash serves windowed layers within the window only)
            return chunks
        return attention_mask(key_pos, q_pos, keys_valid, fresh, backend, hidden.dtype,
                              effective_window(window, past + T), blocks)

    by_layer = None
    if kinds is None:
        overrides["attention_mask"], overrides["position_embeddings"] = mask(), rotaries[None]
    else:
        masks = {w: mask(w) for w in kinds.windows}
        by_layer = [{"attention_mask": masks[w], "position_embeddings": rotaries[r]} for w, r in kinds.per_layer]
    return RegionInputs(hidden, overrides, frozen, plan.index, plan.valid, plan.all_valid, by_layer,
                        chunks is not None)


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


def block_of(blocks: torch.Tensor, pos: torch.Tensor, past: int) -> torch.Tensor:
    """The bidirectional block (``blocks`` [B, T] of this call's tokens, -1: none) of each slot at sequence
    positions ``pos`` [B, N] (-1: unused); -1 for slots outside this call."""
    rel = pos - past
    inside = (rel >= 0) & (rel < blocks.shape[1])
    return torch.where(inside, blocks.gather(1, rel.clamp(0, blocks.shape[1] - 1)), -1)


def attention_mask(key_pos, q_pos, keys_valid: bool, fresh: bool, backend: str, dtype, window: int | None = None,
                   blocks=None):
    """Attention mask of the halted layers in ``backend``'s format, or None where plain causal is exact.

    Args:
        key_pos: long [B, K], the sequence position held by each key slot (-1: unused slot).
        q_pos: long [B, Q], the position of each query slot (-1: filler slot).
        keys_valid: no unused key slot. fresh: the cache held nothing before this call.
        window: a sliding window: a query sees keys less than ``window`` positions back (transformers'
            ``sliding_window_overlay``), by position, whatever the slot order. None: full attention.
        blocks: (long [B, Q], long [B, K]) the bidirectional block of each query and key slot (-1: none): a
            query also sees the later keys of its own block (within the window: transformers' AND(window,
            OR(causal, block))). None: causal only.
    Returns:
        None; bool [B, K] (flash); bool [B, 1, Q, K] (sdpa); or additive ``dtype`` [B, 1, Q, K] (eager).
    """
    Q, K = q_pos.shape[1], key_pos.shape[1]
    # A fresh kv="drop" prefill: keys are the query slots, in position order with fillers last
    # (policy.compact_index), so causal-over-slots is exact for every real query, padded rows included.
    slot_causal = fresh and Q == K and window is None and blocks is None
    if backend.startswith("flash"):
        if blocks is not None:
            raise ValueError("flash attention cannot serve Gemma 3's bidirectional image blocks in the halted "
                             "layers (it takes a key-padding mask only); use attn_implementation='sdpa' or 'eager'")
        if window is not None:  # checks.check_window refuses it first: the kernel slides over slots
            raise ValueError("flash attention applies a sliding window by slot, not by position")
        # Queries are the last Q key slots (kv="drop"), so a 2-D key mask with causal alignment is exact.
        return None if keys_valid or slot_causal else key_pos >= 0
    if window is None and blocks is None and ((keys_valid and Q == 1) or (slot_causal and backend == "sdpa")):
        return None  # decode against valid keys, or a fresh causal prefill: SDPA's is_causal / no mask
    key_ok = key_pos[:, None, :] >= 0
    seen = key_pos[:, None, :] <= q_pos[:, :, None]
    if blocks is not None:
        q_block, k_block = blocks
        seen = seen | policy.same_block(q_block[:, :, None], k_block[:, None, :])
    allowed = key_ok & seen
    if window is not None:
        allowed &= key_pos[:, None, :] > q_pos[:, :, None] - window
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


class HaltedRunner(nn.Module):
    """Takes the place of layer l_s+1 in the decoder stack for one call and runs every halted layer: the
    stock forward loop runs layers 0..l_s and then this, so no transformers code is copied or patched.

    ``run(hidden [B, T, d], layer keyword arguments) -> [B, T, d]``: the halted region of the call in flight.
    """

    def __init__(self, run, attention_type: str | None):
        super().__init__()
        self._run = run
        if attention_type is not None:
            self.attention_type = attention_type

    def forward(self, hidden_states, *args, **kwargs):
        return self._run(hidden_states, kwargs)
