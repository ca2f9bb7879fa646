"""Refusals: what the engine cannot serve exactly, each raised before or instead of touching the call."""
from __future__ import annotations

from transformers.cache_utils import DynamicCache, DynamicLayer, DynamicSlidingWindowLayer

from ..adapters import SUPPORTED_ATTENTION
from . import keep_attention
from .static_cache import is_static

__all__ = ["check_backend", "check_generation", "check_call", "check_compiled_call", "check_cache",
           "check_cache_origin", "check_window"]

# Cache layers that grow by concatenation. Sliding ones behave the same while the sequence fits in the
# window, which ``check_window`` enforces.
_DYNAMIC_CACHE_LAYERS = (DynamicLayer, DynamicSlidingWindowLayer)


def check_backend(backend: str, kv_mode: str) -> None:
    """``backend``: the attention implementation in force (``config._attn_implementation``)."""
    if backend not in SUPPORTED_ATTENTION:
        raise ValueError(f"attention backend {backend!r} is not supported by dashvl; use one of "
                         f"{', '.join(SUPPORTED_ATTENTION)} (attn_implementation=... when loading)")
    if backend.startswith("flash") and kv_mode == "keep" and keep_attention.MODE == "never":
        raise ValueError(f"kv='keep' on {backend} needs dashvl's keep attention, which "
                         "dashvl.engine.keep_attention.MODE='never' turns off; set MODE='auto', or use kv='drop'")


def check_generation(model) -> None:
    gen = getattr(model, "generation_config", None)
    impl = getattr(gen, "cache_implementation", None)
    if impl not in (None, "dynamic", "offloaded", "static"):
        raise ValueError(f"generation_config.cache_implementation={impl!r} is not supported by dashvl; use "
                         "None (the dynamic cache), 'offloaded' or 'static'")
    if getattr(gen, "prefill_chunk_size", None):
        raise ValueError("chunked prefill (generation_config.prefill_chunk_size) is not supported: DASH "
                         "halts tokens of a whole prompt at once; set prefill_chunk_size to None")


def check_call(model, kwargs: dict) -> None:
    """A model call's keyword arguments."""
    if kwargs.get("output_hidden_states") or kwargs.get("output_attentions") or \
            getattr(model.config, "output_hidden_states", False):
        raise ValueError("output_hidden_states / output_attentions are not available on a compressed model "
                         "(halted layers run on fewer tokens); read handle.trace, or restore the model first")


def check_compiled_call(args, kwargs: dict, cache_kw: str) -> None:
    """A call traced by torch.compile runs no hook work of dashvl's, so it must be one whose stock computation
    is exact: a decode step on a StaticCache (``engine.static_cache``), as transformers' compiled decode is."""
    shaped = kwargs.get("input_ids", args[0] if args else None)
    if shaped is None:
        shaped = kwargs.get("inputs_embeds")
    cache = kwargs.get(cache_kw, kwargs.get("past_key_values"))
    if shaped is None or shaped.shape[1] != 1 or not is_static(cache):
        raise RuntimeError("under torch.compile dashvl runs only decode steps on a StaticCache (what "
                           "generate(..., cache_implementation='static') compiles); prompts and dynamic-cache "
                           "steps run uncompiled. Compile a restored model for anything else")


def check_cache(cache, first_halted: int) -> None:
    """The cache a call brought, before anything is read from it."""
    if not isinstance(cache, DynamicCache) or \
            any(type(c) not in _DYNAMIC_CACHE_LAYERS for c in cache.layers[first_halted:]):
        raise ValueError(f"{type(cache).__name__} is not supported by dashvl: use a DynamicCache or a StaticCache "
                         "(cache_implementation=None, 'offloaded' or 'static'); quantized caches are not")


def check_cache_origin(cache, layout, first_halted: int, batch: int) -> None:
    """A non-empty cache must have been built by this compressed model: its halted layers hold what
    ``layout`` (the handle's ``CacheLayout`` for it, or None when nothing halted) says."""
    stored = cache.get_seq_length(first_halted)
    expected = layout.length if layout is not None else cache.get_seq_length()
    if stored != expected or (layout is not None and layout.batch != batch):
        raise RuntimeError("this cache was not built by this compressed model (its halted layers hold "
                           f"{stored} tokens, {expected} expected); start from an empty cache")


def check_window(window: int | None, length: int) -> None:
    """Flash attention only: its kernel slides the window over slots, which after gathering are not positions
    (SDPA and eager get masks by position instead)."""
    if window is not None and length > window:
        raise ValueError(f"this model uses sliding-window attention (window {window}); with flash attention "
                         f"dashvl is exact only for sequences within the window, and this one has {length} tokens; "
                         "use attn_implementation='sdpa' or 'eager', which dashvl serves at any length")
