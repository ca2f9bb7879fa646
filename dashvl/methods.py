"""The scoring methods: one small class per rule, in one registry.

A method ranks the prompt tokens at the activation layer l_s; the lowest-scored eligible tokens halt.
Modelled on kvpress's ``ScorerPress.score``: a new rule is a subclass with a ``score`` of a few lines and one
entry in ``_ALL``. The tensor code stays in ``dashvl.policy``; the engine and the vision tower call
``method.score(ctx)`` / ``method.vision_score(update, seed)`` and never test a method's name.

    class InputNorm(Method):
        name, summary = "input-norm", "the norm of the activation layer's normed input (lowest halts)"
        needs_attention_input = True

        def score(self, ctx):
            return policy.delta_scores(ctx.hidden)

Stages: ``"llm"`` methods score tokens inside ``dashvl.compress``; ``"inputs"`` methods change the inputs
before the model sees them (``downsample``) and are refused by ``DashConfig``.
"""
from __future__ import annotations

import dataclasses

import torch

from . import policy

__all__ = ["Method", "ScoreContext", "REGISTRY", "get", "names", "Dash", "Random", "FastV", "SnapKV", "StreamingLLM",
           "DashAvg", "DashSnap", "DashSinks", "DashQ", "DashQHeads", "DivPrune", "V2Drop", "Downsample"]

STAGES = ("llm", "inputs")


@dataclasses.dataclass(frozen=True)
class ScoreContext:
    """What a method may read at the activation layer l_s of one prefill.

    Attributes:
        attention: the ``self_attn`` module of decoder layer l_s.
        update: U [B, T, d], that module's pre-residual output.
        hidden: [B, T, d], its input (the normed hidden states), when the method sets
            ``needs_attention_input``; else None.
        cos, sin: [B or 1, T, head_dim], the rotary tables the layer received (None if it got none).
        real: bool [B, T], False at padding.
        seed: ``DashConfig.seed``.
        adapter: the model family's ``dashvl.adapters.Adapter`` (family-specific projections, e.g.
            ``window_queries_and_keys``).
        history: float32 [B, T], when the method sets ``needs_history``: the mean over layers 0..l_s of
            each layer's Δ divided by its median over the row's real tokens (``policy.scaled_delta``); else None.
        sliding_window: the activation layer's sliding window (its queries see keys less than that many
            positions back), or None for full attention: attention-based scores see what the layer sees.
        eligible: bool [B, T], the tokens that may halt (scope, ``protect_last``), or None when none halt
            (ratio 0): a method that ranks tokens against each other (``divprune``) ranks these only.
        layer_input: [B, T, d], the residual stream entering decoder layer l_s, when the method sets
            ``needs_layer_input``; else None.
        block_update: [B, T, d], what decoder layer l_s - 1 added to the residual stream (its input subtracted
            from layer l_s's), when the method sets ``needs_block_update``; else None.
        blocks: long [B, T], the prompt's bidirectional blocks (``Adapter.attention_blocks``: Gemma 3's images;
            -1 elsewhere), or None: attention-based scores see what the layer sees.
    """

    attention: torch.nn.Module
    update: torch.Tensor
    hidden: torch.Tensor | None
    cos: torch.Tensor | None
    sin: torch.Tensor | None
    real: torch.Tensor
    seed: int
    adapter: object
    history: torch.Tensor | None = None
    sliding_window: int | None = None
    eligible: torch.Tensor | None = None
    layer_input: torch.Tensor | None = None
    block_update: torch.Tensor | None = None
    blocks: torch.Tensor | None = None


class Method:
    """A rule that ranks tokens; lower scores halt first.

    Class attributes:
        name: the ``DashConfig(method=...)`` value.
        default_scope: the scope when ``DashConfig.scope`` is None: ``"all"``, ``"vision"`` or ``"text"``.
        stage: ``"llm"`` (scores tokens at l_s inside ``compress``) or ``"inputs"`` (changes the inputs).
        summary: one line for UIs and help texts.
        needs_attention_input: ``score`` reads ``ctx.hidden`` (the attention's input).
        needs_history: ``score`` reads ``ctx.history`` (Δ of layers 0..l_s; their attentions are hooked
            during prompts only, so decode steps pay nothing).
        needs_layer_input / needs_block_update: ``score`` reads ``ctx.layer_input`` / ``ctx.block_update``
            (pre-hooks on layers l_s and l_s - 1, during prompts only).
        min_layer: the lowest activation layer the method can score at (``DashConfig`` refuses lower).
    """

    name: str = ""
    default_scope: str = "all"
    stage: str = "llm"
    summary: str = ""
    needs_attention_input: bool = False
    needs_history: bool = False
    needs_layer_input: bool = False
    needs_block_update: bool = False
    min_layer: int = 0

    def score(self, ctx: ScoreContext) -> torch.Tensor:
        """float32 [B, T]: one score per token of the prompt at l_s; lower halts first."""
        raise NotImplementedError(f"method {self.name!r} does not score tokens at the activation layer")

    def vision_score(self, update: torch.Tensor, seed: int) -> torch.Tensor:
        """float32, ``update``'s shape without its last axis: the rank of vision-tower patches at block v_s.

        ``update``: U of that block's attention ([N, d] packed or [images, tokens, d] batched). Δ by default.
        """
        return policy.delta_scores(update)

    def __repr__(self) -> str:
        return f"<method {self.name!r} ({self.stage}): {self.summary}>"


class Dash(Method):
    name, summary = "dash", "DASH: Δ = ||U||₂ of the activation layer's attention update (the paper)"

    def score(self, ctx):
        return policy.delta_scores(ctx.update)


class Random(Method):
    name, summary = "random", "uniform random scores from the seed (the random-halting baseline)"

    def score(self, ctx):
        return policy.random_scores(tuple(ctx.real.shape), ctx.seed, ctx.real.device)

    def vision_score(self, update, seed):
        return policy.random_scores(tuple(update.shape[:-1]), seed, update.device)


class FastV(Method):
    """The attention the last real token pays each token at l_s, averaged over heads (no vision-tower form)."""

    name, default_scope = "fastv", "vision"
    summary = "FastV: the attention the last prompt token pays each token at l_s"
    needs_attention_input = True

    def score(self, ctx):
        T = ctx.real.shape[1]
        positions = torch.arange(T, device=ctx.hidden.device)
        last = torch.where(ctx.real, positions, -1).max(1).values  # the last real token of each row
        query, keys = ctx.adapter.last_query_and_keys(ctx.attention, ctx.hidden, ctx.cos, ctx.sin, last)
        key_ok = ctx.real & (positions[None, :] <= last[:, None])
        if ctx.blocks is not None:  # Gemma 3: a last token inside an image also sees the rest of it
            key_ok |= ctx.real & policy.same_block(ctx.blocks.gather(1, last[:, None]), ctx.blocks)
        if ctx.sliding_window is not None:
            key_ok &= positions[None, :] > last[:, None] - ctx.sliding_window
        scaling = getattr(ctx.attention, "scaling", ctx.attention.head_dim ** -0.5)
        return policy.fastv_scores(query, keys, key_ok, scaling)


class SnapKV(Method):
    """SnapKV as halting (Li et al. 2024): the attention the last ``window`` prompt tokens (the observation
    window: the question, at the end of a prompt) pay each token at l_s, pooled over ``kernel`` neighbours.
    The window itself never halts."""

    name, summary = "snapkv", "SnapKV: attention the last 32 prompt tokens pay each token at l_s, pooled (window kept)"
    needs_attention_input = True
    window, kernel = 32, 7
    value_weighted = False
    heads = "mean"  # over heads (policy.window_scores)

    def score(self, ctx):
        T = ctx.real.shape[1]
        positions = torch.arange(T, device=ctx.hidden.device)
        last = torch.where(ctx.real, positions, -1).max(1).values
        w = min(self.window, T)
        query_pos = (last[:, None] - w + 1 + torch.arange(w, device=last.device)).clamp(min=0)   # [B, w]
        queries, keys = ctx.adapter.window_queries_and_keys(ctx.attention, ctx.hidden, ctx.cos, ctx.sin, query_pos)
        scaling = getattr(ctx.attention, "scaling", ctx.attention.head_dim ** -0.5)
        values = ctx.adapter.value_norms(ctx.attention, ctx.hidden) if self.value_weighted else None
        scores = policy.window_scores(queries, keys, query_pos, ctx.real, scaling, self.kernel, ctx.sliding_window,
                                      ctx.blocks, values, heads=self.heads)
        return scores.masked_fill(positions[None, :] > (last[:, None] - w), policy.KEEP)


class DashQ(SnapKV):
    """DASH's update, seen from the question: a token's part in the attention updates U of the last 32 prompt
    tokens at l_s, Σ_q a_qj ‖v_j‖ per head (the size of what token j adds to U_q), averaged over heads and pooled
    as SnapKV pools. Where the paper's Δ asks how much a token changes, this asks how much it changes the
    question: the tokens that move the question's states least halt first. (Weighting attention by value norms
    is VATP's observation, Guo et al. 2024: attention alone overrates the sinks, whose values are near zero.)
    The window itself never halts."""

    name = "dash-q"
    summary = "DASH-Q: each token's part in the question's attention update at l_s (Σ a·‖v‖, last 32 tokens)"
    value_weighted = True


class DashQHeads(DashQ):
    """dash-q with each head's votes as a share of that head's total and the largest share over heads kept: a
    token that one head (a retrieval head) moves the question with stays, where the mean over heads dilutes it."""

    name = "dash-q-heads"
    summary = "dash-q, each head's share of the question's update, the largest over heads (not the mean)"
    heads = "max"


class StreamingLLM(Method):
    """StreamingLLM as halting (Xiao et al. 2023): the first ``sinks`` tokens (attention sinks) and the most
    recent ones stay; the oldest after the sinks halt first. Content is never looked at."""

    name, summary = "streamingllm", "StreamingLLM: 4 sink tokens and the most recent tokens stay; the oldest halt"
    sinks = 4

    def score(self, ctx):
        return policy.keep_first(policy.recency_scores(ctx.real), ctx.real, self.sinks)


class DashAvg(Method):
    """Δ averaged over layers 0..l_s (each layer's Δ scaled by its median), the first 4 tokens kept.

    Why (``python -m longctx.diagnose`` on SmolLM2-135M): at a middle layer, Δ alone is smallest exactly at the
    tokens a retrieval needs (the attention sinks, the needle, the question) and largest at repetitive filler;
    a token that is new to the context had large updates in the layers below, so the average ranks the needle
    last and filler first. Sinks stay because halting them changes every other token's attention."""

    name = "dash-avg"
    summary = "DASH, Δ averaged over layers 0..l_s (each scaled by its median); 4 sink tokens kept"
    needs_history = True
    sinks = 4

    def score(self, ctx):
        return policy.keep_first(ctx.history, ctx.real, self.sinks)


class DashSnap(Method):
    """dash-avg and SnapKV, ranks averaged: a token stays if it changed a lot on its way to l_s, or if the
    question (the last 32 prompt tokens) attends to it. Sinks and the window stay, as in both."""

    name = "dash-snap"
    summary = "ranks of dash-avg and SnapKV averaged: new-to-the-context or attended by the question"
    needs_attention_input = needs_history = True

    def score(self, ctx):
        avg, snap = REGISTRY["dash-avg"].score(ctx), REGISTRY["snapkv"].score(ctx)
        mixed = 0.5 * (policy.row_ranks(avg, ctx.real) + policy.row_ranks(snap, ctx.real))
        return mixed.masked_fill((avg == policy.KEEP) | (snap == policy.KEEP), policy.KEEP)


class DashSinks(Method):
    """The paper's Δ at l_s with the first 4 tokens kept: isolates what keeping the sinks alone buys."""

    name, summary = "dash-sinks", "DASH's Δ at l_s, with the 4 sink tokens kept"
    sinks = 4

    def score(self, ctx):
        return policy.keep_first(policy.delta_scores(ctx.update), ctx.real, self.sinks)


class DivPrune(Method):
    """DivPrune (Alvar et al., CVPR 2025) as halting: the eligible tokens ranked by greedy max-min diversity of
    the residual stream entering l_s (cosine distance), the order in which the greedy pick takes them; so any
    budget keeps DivPrune's set for that budget. The paper selects the projector's outputs before the LLM:
    ``layer=0`` is the closest (the halted tokens still take part in layer 0)."""

    name, default_scope = "divprune", "vision"
    summary = "DivPrune: the most diverse tokens stay (greedy max-min cosine distance of their hidden states)"
    needs_layer_input = True

    def score(self, ctx):
        eligible = ctx.eligible if ctx.eligible is not None else ctx.real
        return policy.diversity_order(ctx.layer_input, eligible)


class V2Drop(Method):
    """V2Drop (Chen et al. 2025) as halting at one layer: a token's variation is the L2 norm of what layer
    l_s - 1 changed in it (the residual stream entering l_s minus the one entering l_s - 1); the least-varied
    visual tokens halt. The paper drops progressively at several layers; one layer keeps budgets equal."""

    name, default_scope = "v2drop", "vision"
    summary = "V2Drop: the tokens that layer l_s - 1 changed least halt (L2 of the block's update)"
    needs_block_update = True
    min_layer = 1

    def score(self, ctx):
        return ctx.block_update.float().norm(dim=-1)


class Downsample(Method):
    """Fewer visual tokens by downsampling each image before the model (``dashvl.baselines.downsample``)."""

    name, default_scope, stage = "downsample", "vision", "inputs"
    summary = "downsample each image to the same visual-token budget, before the model"
    usage = "dashvl.baselines.downsample(model, processor, ratio)"

    def apply(self, model, processor, ratio: float):
        """The processor wrapper (``dashvl.baselines.Downsample``) removing ``ratio`` of the visual tokens."""
        from .baselines import downsample  # late: baselines imports the adapters
        return downsample(model, processor, ratio)


_ALL = (Dash(), Random(), FastV(), SnapKV(), StreamingLLM(), DashAvg(), DashSnap(), DashSinks(), DashQ(), DashQHeads(),
        DivPrune(), V2Drop(), Downsample())

REGISTRY: dict[str, Method] = {m.name: m for m in _ALL}


def names(stage: str | None = None) -> tuple[str, ...]:
    """The registered method names, in registry order; only those of ``stage`` ("llm" / "inputs") if given."""
    if stage is not None and stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES} or None; got {stage!r}")
    return tuple(n for n, m in REGISTRY.items() if stage is None or m.stage == stage)


def get(name: str, stage: str | None = None) -> Method:
    """The method called ``name``; with ``stage``, only a method of that stage.

    Raises:
        ValueError: an unknown name (the message names the allowed ones), or a method of another stage
            (the message says where it is used instead).
    """
    method = REGISTRY.get(name) if isinstance(name, str) else None
    if method is not None and stage is not None and method.stage != stage:
        use = getattr(method, "usage", None)
        raise ValueError(f"method {name!r} acts on the {method.stage}: use {use} instead" if use else
                         f"method {name!r} is a {method.stage!r} method; here one of {names(stage)} is needed")
    if method is None:
        raise ValueError(f"method must be one of {names(stage)}; got {name!r}")
    return method
