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

__all__ = ["Method", "ScoreContext", "REGISTRY", "get", "names", "Dash", "Random", "FastV", "Downsample"]

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
            ``last_query_and_keys``).
    """

    attention: torch.nn.Module
    update: torch.Tensor
    hidden: torch.Tensor | None
    cos: torch.Tensor | None
    sin: torch.Tensor | None
    real: torch.Tensor
    seed: int
    adapter: object


class Method:
    """A rule that ranks tokens; lower scores halt first.

    Class attributes:
        name: the ``DashConfig(method=...)`` value.
        default_scope: the scope when ``DashConfig.scope`` is None: ``"all"``, ``"vision"`` or ``"text"``.
        stage: ``"llm"`` (scores tokens at l_s inside ``compress``) or ``"inputs"`` (changes the inputs).
        summary: one line for UIs and help texts.
        needs_attention_input: ``score`` reads ``ctx.hidden`` (the attention's input).
    """

    name: str = ""
    default_scope: str = "all"
    stage: str = "llm"
    summary: str = ""
    needs_attention_input: bool = False

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
        scaling = getattr(ctx.attention, "scaling", ctx.attention.head_dim ** -0.5)
        return policy.fastv_scores(query, keys, key_ok, scaling)


class Downsample(Method):
    """Fewer visual tokens by downsampling each image before the model (``dashvl.baselines.downsample``)."""

    name, default_scope, stage = "downsample", "vision", "inputs"
    summary = "downsample each image to the same visual-token budget, before the model"
    usage = "dashvl.baselines.downsample(model, processor, ratio)"

    def apply(self, model, processor, ratio: float):
        """The processor wrapper (``dashvl.baselines.Downsample``) removing ``ratio`` of the visual tokens."""
        from .baselines import downsample  # late: baselines imports the adapters
        return downsample(model, processor, ratio)


_ALL = (Dash(), Random(), FastV(), Downsample())

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
