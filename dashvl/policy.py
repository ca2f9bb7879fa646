"""The halting rule as pure tensor code: token kinds, eligibility, Δ scores, selection, compaction.

Nothing here knows a model family or touches a module; the engine calls these functions.
"""
from __future__ import annotations

import torch

__all__ = [
    "KIND_TEXT", "KIND_IMAGE", "KIND_VIDEO", "KIND_PAD", "KIND_NAMES",
    "token_kinds", "eligible_tokens", "delta_scores", "scaled_delta", "random_scores", "fastv_scores",
    "window_scores", "recency_scores", "keep_first", "row_ranks", "select_halted", "compact_index", "KEEP",
]

KIND_TEXT, KIND_IMAGE, KIND_VIDEO, KIND_PAD = 0, 1, 2, 3
KIND_NAMES = ("text", "image", "video", "pad")
# The score of a token that should stay if at all possible: finite, so such tokens still sort before the
# ineligible ones (select_halted sets those to +inf) when a high ratio must halt some of them.
KEEP = torch.finfo(torch.float32).max


def token_kinds(input_ids: torch.Tensor | None, real: torch.Tensor,
                image_token_id: int | None, video_token_id: int | None) -> torch.Tensor:
    """Kind of every token: int8 [B, T] with values KIND_TEXT / KIND_IMAGE / KIND_VIDEO / KIND_PAD.

    Args:
        input_ids: [B, T] token ids, or None when the model got embeddings (then all real tokens are text).
        real: bool [B, T], False at padding.
    """
    kinds = torch.full(real.shape, KIND_TEXT, dtype=torch.int8, device=real.device)
    if input_ids is not None:
        if image_token_id is not None:
            kinds.masked_fill_(input_ids == image_token_id, KIND_IMAGE)
        if video_token_id is not None:
            kinds.masked_fill_(input_ids == video_token_id, KIND_VIDEO)
    return kinds.masked_fill_(~real, KIND_PAD)


def eligible_tokens(kinds: torch.Tensor, scope: str, protect_last: int) -> torch.Tensor:
    """Tokens that may halt: bool [B, T].

    Real tokens of the kinds ``scope`` names, minus the last ``protect_last`` real tokens of each row
    (counted from the right, so right padding is handled too).
    """
    real = kinds != KIND_PAD
    if scope == "all":
        in_scope = real
    elif scope == "vision":
        in_scope = (kinds == KIND_IMAGE) | (kinds == KIND_VIDEO)
    elif scope == "text":
        in_scope = kinds == KIND_TEXT
    else:
        raise ValueError(f"scope must be one of ('all', 'vision', 'text'); got {scope!r}")
    from_right = real.flip(1).cumsum(1).flip(1)  # 1 at the last real token, 2 before it, ...
    protected = real & (from_right <= protect_last)
    return in_scope & ~protected


def delta_scores(update: torch.Tensor) -> torch.Tensor:
    """Δ_t = ||U_t||_2 in float32: [B, T, d] -> [B, T] (no float32 copy of U is made)."""
    wide = torch.promote_types(update.dtype, torch.float32)  # float64 models: norm in float64, then float32
    return torch.linalg.vector_norm(update, dim=-1, dtype=wide).float()


def scaled_delta(update: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """Δ divided by its median over each row's real tokens: [B, T, d] -> float32 [B, T].

    Layers differ in the scale of their updates; scaled, Δs of several layers can be averaged fairly.
    """
    delta = delta_scores(update)
    median = delta.masked_fill(~real, float("nan")).nanmedian(1, keepdim=True).values
    return delta / median.clamp_min(1e-12)


def row_ranks(scores: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """Each real token's rank among its row's real tokens as a fraction in [0, 1] (0 = lowest score); padding 0.

    Scores of different scales (Δ, attention) combine fairly as ranks."""
    masked = scores.float().masked_fill(~real, float("inf"))
    order = torch.sort(masked, dim=1, stable=True).indices
    ranks = torch.empty_like(order).scatter_(1, order, torch.arange(scores.shape[1], device=scores.device).expand_as(order))
    n = real.sum(1, keepdim=True).clamp(min=2) - 1
    return (ranks.float() / n).masked_fill(~real, 0.0)


def keep_first(scores: torch.Tensor, real: torch.Tensor, n: int) -> torch.Tensor:
    """``scores`` with the first ``n`` real tokens of each row set to ``KEEP`` (the attention sinks)."""
    order = torch.cumsum(real.long(), 1)  # 1 at a row's first real token
    return scores.masked_fill(real & (order <= n), KEEP)


def random_scores(shape: tuple[int, int], seed: int, device) -> torch.Tensor:
    """Uniform scores [B, T] from a generator seeded with ``seed`` on ``device`` (random halting)."""
    g = torch.Generator(device=device).manual_seed(seed)
    return torch.rand(shape, generator=g, device=device)


def fastv_scores(query: torch.Tensor, keys: torch.Tensor, key_ok: torch.Tensor, scaling: float) -> torch.Tensor:
    """FastV's rank: the attention one query (the last prompt token) pays each key, averaged over heads.

    Computed from one attention row, so no attention matrix is materialised and SDPA stays usable.

    Args:
        query: [B, H, 1, hd] (RoPE applied); keys: [B, KV, T, hd] (RoPE applied; KV divides H).
        key_ok: bool [B, T], the keys the query may attend to.
    Returns:
        float32 [B, T]; 0 where ``key_ok`` is False.
    """
    groups = query.shape[1] // keys.shape[1]
    keys = keys.repeat_interleave(groups, dim=1)
    logits = (query.float() @ keys.float().transpose(-1, -2)).squeeze(2) * scaling   # [B, H, T]
    logits = logits.masked_fill(~key_ok[:, None, :], float("-inf"))
    return logits.softmax(-1).mean(1)


def window_scores(queries: torch.Tensor, keys: torch.Tensor, query_pos: torch.Tensor, real: torch.Tensor,
                  scaling: float, kernel: int, sliding_window: int | None = None,
                  blocks: torch.Tensor | None = None, value_norms: torch.Tensor | None = None,
                  heads: str = "mean") -> torch.Tensor:
    """SnapKV's rank: the attention a window of queries pays each key, summed over the window, averaged over
    heads, then average-pooled along the sequence (``kernel``, odd) so that neighbours of attended tokens rank
    high too. One [B, H, w, T] block in float32, never T x T.

    Args:
        queries: [B, H, w, hd] at positions ``query_pos`` (long [B, w]); keys: [B, KV, T, hd] (RoPE applied).
        real: bool [B, T]; a query attends to the real keys at or before its position (and, with a
            ``sliding_window``, less than that many positions back).
        blocks: long [B, T] or None: a query also attends to the later keys of its own block (id >= 0), as
            Gemma 3's image tokens do.
        value_norms: float32 [B, KV, T] or None: each attention weight times the norm of the key's value in
            that head, so a vote is the size of the key's part in the query's attention update (``dash-q``).
        heads: ``"mean"`` (SnapKV) or ``"max"``: each head's votes as a share of that head's total, the largest
            share over heads (a token one head needs stays, however the others vote).
    Returns:
        float32 [B, T].
    """
    if kernel < 1 or kernel % 2 != 1:
        raise ValueError(f"kernel must be an odd int >= 1 (centred pooling); got {kernel}")
    if heads not in ("mean", "max"):
        raise ValueError(f"heads must be 'mean' or 'max'; got {heads!r}")
    T = keys.shape[2]
    keys = keys.repeat_interleave(queries.shape[1] // keys.shape[1], dim=1)
    logits = (queries.float() @ keys.float().transpose(-1, -2)) * scaling                  # [B, H, w, T]
    pos = torch.arange(T, device=keys.device)
    seen = pos[None, None, None, :] <= query_pos[:, None, :, None]
    if blocks is not None:
        seen = seen | same_block(blocks.gather(1, query_pos)[:, None, :, None], blocks[:, None, None, :])
    allowed = real[:, None, None, :] & seen
    if sliding_window is not None:
        allowed &= pos[None, None, None, :] > query_pos[:, None, :, None] - sliding_window
    weights = logits.masked_fill(~allowed, float("-inf")).softmax(-1).nan_to_num(0.0)      # [B, H, w, T]
    if value_norms is not None:
        weights = weights * value_norms.repeat_interleave(queries.shape[1] // value_norms.shape[1], dim=1)[:, :, None]
    query_ok = real.gather(1, query_pos)  # a row shorter than the window: its padding asks nothing
    votes = (weights * query_ok[:, None, :, None]).sum(2)                                     # [B, H, T]
    if heads == "max":
        votes = (votes / votes.sum(-1, keepdim=True).clamp(min=torch.finfo(torch.float32).tiny)).amax(1)
    else:
        votes = votes.mean(1)                                                                 # [B, T]
    return torch.nn.functional.avg_pool1d(votes[:, None], kernel, stride=1, padding=kernel // 2,
                                          count_include_pad=False)[:, 0]


def recency_scores(real: torch.Tensor) -> torch.Tensor:
    """StreamingLLM's rank without content: a token's position among its row's real tokens (oldest halt first)."""
    return (torch.cumsum(real.long(), 1) - 1).float()


def select_halted(scores: torch.Tensor, eligible: torch.Tensor, num_halt: torch.Tensor) -> torch.Tensor:
    """The ``num_halt[b]`` eligible tokens of row b with the smallest score: bool [B, T].

    Ties go to the earlier position (stable sort). Requires ``num_halt[b] <= eligible[b].sum()``.

    Args:
        scores: float [B, T]; lower means more redundant.
        eligible: bool [B, T].
        num_halt: long [B].
    """
    masked = scores.float().masked_fill(~eligible, float("inf"))
    order = torch.sort(masked, dim=1, stable=True).indices
    ranks = torch.arange(scores.shape[1], device=scores.device)
    chosen = ranks[None, :] < num_halt[:, None]
    return torch.zeros_like(eligible).scatter_(1, order, chosen)


def compact_index(keep: torch.Tensor, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Gather indices that pack each row's kept tokens, in order, into ``width`` slots.

    Rows with fewer than ``width`` kept tokens get trailing filler slots, which point at tokens that are
    not kept and are marked invalid. Indices within a row are distinct (so a scatter back is well defined),
    and, fillers coming last, attention that is causal over slots is exact for every kept token.

    Args:
        keep: bool [B, T]; every row has at most ``width`` True entries, and T >= width.
    Returns:
        index: long [B, width]; valid: bool [B, width].
    """
    order = torch.sort((~keep).to(torch.uint8), dim=1, stable=True).indices  # kept first, each group in order
    index = order[:, :width]
    return index, keep.gather(1, index)


def diversity_order(features: torch.Tensor, eligible: torch.Tensor) -> torch.Tensor:
    """float32 [B, T]: DivPrune's greedy max-min diversity order of each row's eligible tokens, as scores.

    The first pick is the token farthest (cosine distance) from its nearest eligible neighbour; each next pick
    the token farthest from everything picked so far. A token's score is the number of eligible tokens picked
    after it (the first pick scores highest), so keeping the top k of a row keeps the greedy set of size k.
    Tokens that are not eligible score ``KEEP``."""
    B, T, _ = features.shape
    x = torch.nn.functional.normalize(features.float(), dim=-1)
    dist = 1.0 - x @ x.transpose(1, 2)                                   # [B, T, T]
    pair_ok = eligible[:, :, None] & eligible[:, None, :]
    eye = torch.eye(T, dtype=torch.bool, device=features.device)
    nearest = dist.masked_fill(~pair_ok | eye, float("inf")).min(2).values  # distance to the nearest neighbour
    n = eligible.sum(1)
    scores = torch.full((B, T), KEEP, device=features.device)
    scores = scores.masked_fill(eligible, 0.0)
    rows = torch.arange(B, device=features.device)
    open_ = eligible.clone()
    reach = nearest.masked_fill(~eligible, -1.0).nan_to_num(posinf=2.0)     # a lone token: distance 2, the most
    for step in range(int(n.max()) if B else 0):
        pick = reach.masked_fill(~open_, -1.0).argmax(1)                     # [B]
        live = open_[rows, pick]                                             # rows with tokens left
        scores[rows[live], pick[live]] = (n[live] - step).float()
        open_[rows[live], pick[live]] = False
        if step == 0:
            reach = torch.full_like(reach, float("inf"))
        reach = torch.minimum(reach, dist[rows, pick])                       # distance to the picked set
    return scores


def same_block(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """bool, ``a`` and ``b`` broadcast: both tokens in one bidirectional block (ids >= 0; -1 is no block), where
    attention runs both ways (Gemma 3's images, ``Adapter.attention_blocks``)."""
    return (a == b) & (a >= 0)
