"""The plan of one model call: token kinds, eligibility and every shape of the halted region, known before
the GPU has work queued; then, as the call runs, its cache, scores and gather indices."""
from __future__ import annotations

import torch

from .. import policy
from .frozen_keys import FrozenKeys
from .graphs import bucket_width
from .static_cache import is_static

__all__ = ["CallPlan", "plan_call", "real_tokens"]


class CallPlan:
    """State of one model call (a prefill, a later turn's prompt or a decode step), from the model
    pre-hook to the model post-hook. B = ``batch``, T = ``length``, A = ``width``.

    Set when planned (``plan_call``):
        real: bool [B, T], False at padding; None for a decode step (T = 1).
        kinds: int8 [B, T] (``policy.KIND_*``); None for a decode step, and at ratio 0, where the trace
            works them out from ``token_ids`` only if it is read.
        mask: the call's 2-D attention mask [B, past + T] (1 = token), or None.
        grid_inputs: what ``adapter.trace_inputs`` kept of the call, for the trace's image grids.
        When the call halts anything (``num_halted`` is not None):
        num_halted: long [B] on the device, halted tokens per row. eligible: bool [B, T].
        width: active slots per row above l_s (the most active tokens of any row).
        all_valid: every row fills its ``width`` slots (no filler slots).
        frozen_keys: kv="keep": the halted tokens' keys/values above l_s (``FrozenKeys``); else None.
    Set as the call runs:
        fast_keep: kv="keep" runs the halted layers' attention through ``keep_attention`` (no mask).
        started: the decoder stack began running this call.
        graph: the halted region replays a CUDA graph in this call (``use_graph``).
        cache, past_length: the call's cache and how many tokens it held before the call (noted as the decoder
            stack starts; a cache the stack makes itself is noted by the runner).
        layout: the ``CacheLayout`` of that cache's halted layers, when earlier calls halted tokens in it.
        static: the call's StaticCache when its prompt halts tokens (``cache`` is then the private DynamicCache
            the halted layers fill, ``static_cache.store``d into it by position); else None.
        scores: float32 [B, T], the method's scores at l_s. active: bool [B, T], the tokens that go on.
        index, valid: long / bool [B, A], the gather indices of the active tokens and which slots are real.
        region: the halted region's inputs (``region.RegionInputs``), once entered.
    """

    def __init__(self, batch: int, length: int, real, kinds, mask, grid_inputs: dict, token_ids=None):
        self.batch, self.length = batch, length
        self.real, self.kinds, self.mask, self.grid_inputs = real, kinds, mask, grid_inputs
        self.token_ids = token_ids
        self.num_halted = None
        self.blocks = None  # long [B, T]: bidirectional blocks of a prompt (adapter.attention_blocks), or None
        self.eligible = None
        self.width = 0
        self.all_valid = True
        self.frozen_keys: FrozenKeys | None = None
        self.fast_keep = False  # kv="keep" through keep_attention (no mask): decided as the stack starts
        self.started = False
        self.graph = False
        self.graph_real = None
        self.cache = None
        self.past_length = 0
        self.layout = None
        self.static = None
        self.scores = None
        self.active = None
        self.index = self.valid = None
        self.region = None

    def select(self, scores: torch.Tensor) -> None:
        """At l_s: keep the method's ``scores`` [B, T] and, when tokens halt, pick them and their slots."""
        self.scores = scores
        if self.num_halted is None:
            return
        halted = policy.select_halted(scores, self.eligible, self.num_halted)
        self.active = self.real & ~halted
        self.index, self.valid = policy.compact_index(self.active, self.width)
        if self.frozen_keys is not None:
            self.frozen_keys.select(halted)

    def use_graph(self, width: int) -> None:
        """The halted region replays a CUDA graph with ``width`` (>= the active count) slots per row."""
        self.graph = True
        # what the rows really fill, before bucketing: the cache keeps only those slots (graphs.real_slots)
        self.graph_real = (self.width, self.all_valid) + ((self.frozen_keys.width, self.frozen_keys.all_valid)
                                                          if self.frozen_keys is not None else (0, True))
        self.all_valid = self.all_valid and width == self.width
        self.width = width
        if self.frozen_keys is not None:  # its slots too, so nearby lengths share a graph
            self.frozen_keys.round_up(min(bucket_width(self.frozen_keys.width), self.length))


def real_tokens(mask, B: int, T: int, device) -> torch.Tensor:
    """bool [B, T]: the call's own tokens that are not padding (the 2-D mask's last T columns)."""
    return mask[:, -T:].bool() if mask is not None else torch.ones(B, T, dtype=torch.bool, device=device)


def _static_prompt(kwargs) -> bool:
    cache = kwargs.get("cache", kwargs.get("past_key_values"))
    return cache is not None and is_static(cache)


def _padding_of(mask, B: int, T: int):
    """The 2-D mask [B, T] (1 = token) of a prompt on an empty static cache, from the 4-D mask [B, 1, T, S]
    (bool, or additive with 0 = allowed; a dict of them per layer type) that generate prepares for it: a token
    sees itself unless it is padding, so the diagonal is the padding mask. None stays None (no padding)."""
    if isinstance(mask, dict):
        mask = mask.get("full_attention", next(iter(mask.values()), None))
    if mask is None or mask.dim() == 2:
        return mask
    if mask.dim() != 4 or mask.shape[-2] != T or mask.shape[-1] < T:
        raise ValueError(f"dashvl needs a 2-D attention_mask [batch, length], or generate's 4-D mask for a static "
                         f"cache [batch, 1, length, cache length]; got shape {tuple(mask.shape)}")
    t = torch.arange(T, device=mask.device)
    diag = mask[:, 0, t, t]
    return (diag if diag.dtype == torch.bool else diag == 0).long().expand(B, T)


def plan_call(config, args, kwargs, grid_inputs: dict, kinds_of, halted_kv=None) -> CallPlan | None:
    """The plan of a call to the model (or to its decoder stack) with these arguments; None without tokens.

    Args:
        config: the ``DashConfig`` in force.
        kinds_of: ``(input_ids or None, real) -> kinds`` int8 [B, T] (``policy.token_kinds`` with the model's ids).
        halted_kv: kv="keep": ``adapter.halted_kv``, which ``FrozenKeys`` calls per layer; None for kv="drop".
    """
    ids = kwargs.get("input_ids", args[0] if args else None)
    embeds = kwargs.get("inputs_embeds")
    shaped = ids if ids is not None else embeds
    if shaped is None:
        return None
    B, T = shaped.shape[:2]
    mask = kwargs.get("attention_mask")
    if T > 1 and _static_prompt(kwargs):  # generate() prepared a 4-D mask for the static cache
        mask = _padding_of(mask, B, T)
    elif isinstance(mask, dict):  # generate() may hand the language model its prepared masks
        mask = None
    if T == 1:  # a decode step: nothing halts and nothing is traced, so no per-token bookkeeping (the halted
        # layers' masks are the runner's, or, on a static cache, the stock 4-D one generate prepares)
        return CallPlan(B, T, None, None, mask if mask is None or mask.dim() == 2 else None, grid_inputs)
    if mask is not None and mask.dim() != 2:
        raise ValueError(f"dashvl needs a 2-D attention_mask [batch, length] (1 = token, 0 = padding); "
                         f"got shape {tuple(mask.shape)}")
    real = real_tokens(mask, B, T, shaped.device)
    if config.ratio == 0:  # nothing halts: token kinds are only for the trace, worked out if it is read
        return CallPlan(B, T, real, None, mask, grid_inputs, token_ids=ids)
    plan = CallPlan(B, T, real, kinds_of(ids, real), mask, grid_inputs)
    eligible = policy.eligible_tokens(plan.kinds, config.scope, config.protect_last)
    if mask is None and config.scope == "all":
        n_real, n_elig = [T] * B, [max(T - config.protect_last, 0)] * B
    else:  # the one host sync of a prefill, taken before any GPU work of this call is queued
        n_real, n_elig = torch.stack([real.sum(1), eligible.sum(1)]).tolist()
    num_halted = [config.num_halted(e) for e in n_elig]
    if any(num_halted):
        n_active = [r - h for r, h in zip(n_real, num_halted)]
        # the same counts on the device: a fill when rows agree (no copy at all); else a small copy,
        # right after the sync above, when the GPU has nothing queued to wait for
        plan.num_halted = torch.full((B,), num_halted[0], device=shaped.device) if len(set(num_halted)) == 1 \
            else torch.tensor(num_halted, device=shaped.device)
        plan.eligible = eligible
        plan.width = max(n_active)
        plan.all_valid = min(n_active) == plan.width
        if halted_kv is not None:
            plan.frozen_keys = FrozenKeys(max(num_halted), min(num_halted) == max(num_halted), halted_kv)
    return plan
