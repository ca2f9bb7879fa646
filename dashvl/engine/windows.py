"""Halted layers that differ from one another: sliding-window attention (Mistral; Gemma 3's local layers) and
rotary embeddings per kind of layer (Gemma 3: local and global).

In the halted region a layer's window applies to the tokens' original positions, not to their slot order, so
each kind of layer gets its own mask (``region.attention_mask(..., window=)``), and each its own cos/sin. And
the halted sliding layers keep their whole cache: ``DynamicSlidingWindowLayer`` trims by slot count, which after
gathering is not by position, so ``keep_whole`` puts plain ``DynamicLayer``s in their place when a prompt first
halts tokens in a cache. Their masks then leave out what lies beyond the window.
"""
from __future__ import annotations

from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

__all__ = ["RegionKinds", "keep_whole"]


class RegionKinds:
    """The kinds of the halted layers: per layer (window or None, rope kind or None).

    Attributes:
        per_layer: one (window, rope) per halted layer, in order.
        windows: the distinct windows (None = full attention). ropes: the distinct rope kinds.
    """

    def __init__(self, windows: list, ropes: list):
        self.per_layer = list(zip(windows, ropes))
        self.windows = sorted(set(windows), key=lambda w: -1 if w is None else w)
        self.ropes = sorted(set(ropes), key=str)

    @classmethod
    def of(cls, adapter, model, first_halted: int) -> "RegionKinds | None":
        """The halted layers' kinds, or None when they are all alike, with full attention and the call's
        rotary embedding (every other family): the region then runs as one kind."""
        windows = adapter.layer_windows(model)[first_halted:]
        ropes = adapter.rope_kinds(model)[first_halted:]
        if all(w is None for w in windows) and all(r is None for r in ropes):
            return None
        return cls(windows, ropes)

    @property
    def windowed(self) -> bool:
        return any(w is not None for w in self.windows)


def effective_window(window: int | None, length: int) -> int | None:
    """``window``, or None where it cannot matter: every position of a sequence of ``length`` tokens lies
    within it of every other."""
    return None if window is None or length <= window else window


def keep_whole(cache, first_halted: int, past: int) -> None:
    """Before a prompt first halts tokens in ``cache`` (it holds ``past`` tokens): its sliding-window layers
    above l_s become plain layers holding what they hold. ValueError if one of them already dropped tokens (an
    earlier prompt halted nothing and ran past the window): the halted region needs their keys by position."""
    for j in range(first_halted, len(cache.layers)):
        layer = cache.layers[j]
        if not isinstance(layer, DynamicSlidingWindowLayer):
            continue
        whole = DynamicLayer()
        if layer.is_initialized and layer.keys is not None and layer.keys.numel():
            if layer.keys.shape[-2] != past:
                raise ValueError(f"this cache's sliding-window layer {j} (above the activation layer) already "
                                 f"dropped tokens beyond its window ({layer.keys.shape[-2]} of {past} kept): a "
                                 "prompt that halts tokens needs them by position; start from an empty cache")
            whole.lazy_initialization(layer.keys, layer.values)
            whole.keys, whole.values = layer.keys, layer.values
        cache.layers[j] = whole
