"""Settings of one DASH installation, validated before the model is touched."""
from __future__ import annotations

import dataclasses
import numbers

from . import methods

__all__ = ["DashConfig", "KV_MODES", "SCOPES", "METHODS", "TEXT_DEFAULTS", "VISION_DEFAULTS"]

KV_MODES = ("drop", "keep")
SCOPES = ("all", "vision", "text")
# The methods compress() takes (dashvl.methods holds them; this alias is for older imports).
METHODS = methods.names("llm")
# What compress() uses on a text-only LM (Llama / Qwen2 / Mistral) for every setting the call leaves out, from
# the text accuracy table (longctx/results/smollm2_table.md, SmolLM2-135M, 13 tasks at 2k tokens): dash-snap at
# 0.4·L and ρ = 0.25 kept 94% of the unmodified score (34.7 vs 36.9) at a 1.20× prefill FLOPs limit, the best
# row at that budget; the paper's Δ kept 0% there, random 10%. An explicit DashConfig is taken as it is.
TEXT_DEFAULTS = {"method": "dash-snap", "layer": 0.4, "ratio": 0.25}
# What compress() uses on a vision-language model for every setting the call leaves out, from the vision-language
# table on the two VLMs with a real pretrained LM (synthvqa/reports/vl_table_smollm2.md: SmolLM2-135M inside
# Qwen2-VL and LLaVA, 180 questions each): FastV's score at layer 2 halting 2/3 of each image's tokens (scope
# "vision", kv "drop") lost 1.2 points of the unmodified mean on one and gained 1.2 on the other, the best rows at
# that budget (V2Drop tied it on the Qwen2-VL one); the paper's Δ there lost 57 and 42 points, random halting 26
# and 13.
VISION_DEFAULTS = {"method": "fastv", "layer": 2, "ratio": 0.667}


@dataclasses.dataclass(frozen=True)
class DashConfig:
    """What DASH halts, where, and how halted tokens are treated above the activation layer.

    Attributes:
        ratio: ρ in [0, 1): per batch row, ``floor(ρ · n_eligible)`` eligible tokens halt.
        layer: the activation layer l_s. An int in [0, L-2], or a float in (0, 1) meaning
            ``floor(layer · L)`` (clamped to L-2) for a model of L decoder layers.
        kv: ``"drop"`` (halted tokens are neither queries nor keys above l_s; the paper) or
            ``"keep"`` (halted tokens still serve as keys/values, from their frozen state).
        scope: which tokens may halt: ``"all"`` (the paper), ``"vision"`` (image/video tokens) or
            ``"text"``. None: the method's ``default_scope`` (``"vision"`` for FastV, else ``"all"``).
        protect_last: the last N real prompt tokens of each row never halt (N >= 1: the last
            token's logits are the output of prefill).
        method: the score that ranks tokens, a name in ``dashvl.methods.names("llm")``: ``"dash"``
            (Δ = ||U||₂, the paper), ``"dash-avg"`` / ``"dash-snap"`` / ``"dash-sinks"`` / ``"dash-q"`` / ``"dash-q-heads"`` (dashvl's
            text criteria, see ``dashvl.methods``), ``"random"`` (uniform, seeded), ``"fastv"`` (attention the last token pays
            each token at l_s), ``"snapkv"`` (the last 32 tokens' attention, pooled) or ``"streamingllm"``
            (sinks + recent). ``compress`` without a config fills unset settings from ``TEXT_DEFAULTS`` on a
            text-only LM and from ``VISION_DEFAULTS`` on a vision-language model; a DashConfig's own defaults
            are the paper's.
        seed: the seed of ``"random"``.
        vision_ratio: fraction of each image's patches that halt inside the vision tower (0: off). Ranked
            by the method's ``vision_score``: Δ, or at random with method="random" (FastV has no
            vision-tower form: with it, Δ ranks them).
        vision_layer: the vision block v_s where they halt: an int in [0, depth-2] or a float in (0, 1).
        cuda_graph: replay the layers above l_s as a CUDA graph per (batch, width) shape, so short prompts
            gain too (see ``dashvl.graphs``). None (default): wherever it applies (a fresh prefill, either kv
            mode, under no_grad on one CUDA device); True: the same, and an error if the model runs elsewhere;
            False: never.
    """

    ratio: float = 0.5
    layer: int | float = 2
    kv: str = "drop"
    scope: str | None = None
    protect_last: int = 1
    method: str = "dash"
    seed: int = 0
    vision_ratio: float = 0.0
    vision_layer: int | float = 0.25
    cuda_graph: bool | None = None

    def __post_init__(self):
        method = methods.get(self.method, stage="llm")  # ValueError naming the methods compress() takes
        if self.scope is None:
            object.__setattr__(self, "scope", method.default_scope)
        if isinstance(self.seed, bool) or not isinstance(self.seed, numbers.Integral):
            raise ValueError(f"seed must be an int; got {self.seed!r}")
        _check_ratio("ratio", self.ratio, "eligible tokens")
        _check_layer("layer", self.layer)
        _check_ratio("vision_ratio", self.vision_ratio, "each image's patches in the vision tower")
        _check_layer("vision_layer", self.vision_layer)
        if self.kv not in KV_MODES:
            raise ValueError(f"kv must be one of {KV_MODES}; got {self.kv!r}")
        if self.scope not in SCOPES:
            raise ValueError(f"scope must be one of {SCOPES}; got {self.scope!r}")
        if self.cuda_graph not in (None, True, False):
            raise ValueError(f"cuda_graph must be None (automatic), True or False; got {self.cuda_graph!r}")
        if isinstance(self.protect_last, bool) or not isinstance(self.protect_last, numbers.Integral) or self.protect_last < 1:
            raise ValueError(f"protect_last must be an int >= 1 (the last prompt token always stays active); got {self.protect_last!r}")

    def resolve_layer(self, num_layers: int) -> int:
        """The activation layer index for a model of ``num_layers`` decoder layers.

        Raises ValueError when it is not in [0, num_layers - 2] (at least one layer must run above it).
        """
        layer = _resolve("layer", self.layer, num_layers, "decoder layers")
        low = getattr(methods.REGISTRY.get(self.method), "min_layer", 0)
        if layer < low:
            raise ValueError(f"method {self.method!r} needs layer >= {low} (it reads what layer {low - 1} changed); "
                             f"got layer {self.layer!r} (= {layer})")
        return layer

    def resolve_vision_layer(self, num_blocks: int) -> int:
        """The vision block v_s for a tower of ``num_blocks`` blocks (ValueError outside [0, num_blocks - 2])."""
        return _resolve("vision_layer", self.vision_layer, num_blocks, "vision blocks")

    def num_halted(self, n_eligible: int) -> int:
        """floor(ρ · n), with a tolerance of 1e-9 so that e.g. 0.29 · 100 gives 29, not 28."""
        return int(self.ratio * n_eligible + 1e-9)


def _check_ratio(name, value, what):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= value < 1:
        raise ValueError(f"{name} must be a number in [0, 1) (the fraction of {what} that halt); got {value!r}")


def _check_layer(name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or \
            (isinstance(value, numbers.Integral) and value < 0):
        raise ValueError(f"{name} must be an int >= 0 or a float in (0, 1); got {value!r}")
    if not isinstance(value, numbers.Integral) and not 0 < value < 1:
        raise ValueError(f"{name} as a float is a fraction of the depth and must lie in (0, 1); got {value!r}")


def _resolve(name, value, depth: int, what: str) -> int:
    if depth < 2:
        raise ValueError(f"DASH needs at least 2 {what}; this model has {depth}")
    layer = int(value) if isinstance(value, numbers.Integral) else min(int(value * depth), depth - 2)
    if not 0 <= layer <= depth - 2:
        raise ValueError(f"{name} must be in [0, {depth - 2}] for this model ({depth} {what}), "
                         f"or a float in (0, 1); got {value!r}")
    return layer
