"""A ``StaticCache`` (``generate(..., cache_implementation="static")``, whose decode step transformers compiles).

Every layer of a static cache holds one slot per sequence position, and the stock decode step attends to
slots 0..position. So a halted prefill runs the halted region against a private ``DynamicCache`` as usual,
then ``store`` writes each halted layer's keys/values into the static layer *at their sequence positions*:

- kv="keep": every position has a key in every layer (halted tokens' from their frozen state), so the
  static cache is a stock one and decode steps are the stock steps: no hook of dashvl's does any work, and
  transformers' compiled decode step runs as it is.
- kv="drop": the halted tokens' slots stay empty in the halted layers. ``HoleMasks`` (a pre-hook on each halted
  layer, installed once such a cache exists) removes those slots from the stock decode mask: one ``&`` per
  layer, traced into the compiled step like the rest of it.

The holes (bool [B, max_len], True = the slot holds a key) live on the cache object, so beam search reorders
them with the cache and a new prompt on the cache clears them.

torch.compile does not guard on module hooks (``torch._dynamo.config.skip_nnmodule_hook_guards``): a decode step
compiled before ``compress`` would replay without the hole masks, and one compiled with them would keep them
after ``restore``. So a kv="drop" model gets its decode step compiled through a function of its own
(``CompiledDecode``), whose compiled code no other setting shares; kv="keep" and ratio 0 decode the stock way,
so any compiled step is right for them.
"""
from __future__ import annotations

import types
import weakref

import torch
from transformers.cache_utils import DynamicCache, StaticLayer

__all__ = ["is_static", "check_static", "store", "holes_of", "set_holes", "HoleMasks", "CompiledDecode"]

_HOLES = "_dashvl_holes"
_REORDER_WRAPPED = "_dashvl_reorders_holes"


def is_static(cache) -> bool:
    if isinstance(cache, DynamicCache):  # the common case, answered without walking its layers
        return False
    return any(isinstance(c, StaticLayer) for c in getattr(cache, "layers", ()))


def check_static(cache, first_halted: int, backend: str) -> None:
    """A static cache dashvl can serve exactly: plain static layers above l_s, an SDPA or eager mask."""
    kinds = {type(c).__name__ for c in cache.layers[first_halted:]}
    if kinds != {StaticLayer.__name__}:
        raise ValueError(f"a static cache with {', '.join(sorted(kinds))} layers above the activation layer is not "
                         "supported: dashvl serves StaticLayer (full attention) and DynamicCache layers; "
                         "sliding-window and offloaded static layers are not")
    if getattr(cache, "offloading", False):
        raise ValueError("an offloaded StaticCache is not supported by dashvl; use offloading=False")
    if backend.startswith("flash"):
        raise ValueError(f"a static cache with attn_implementation={backend!r} is not supported by dashvl: its "
                         "decode mask cannot leave out halted keys; use the dynamic cache with flash attention, "
                         "or attn_implementation='sdpa' / 'eager' with the static cache")


def max_length(cache) -> int:
    return cache.layers[0].max_cache_len


def store(private: DynamicCache, static, first_halted: int, key_pos: torch.Tensor, length: int,
          drop: bool) -> torch.Tensor | None:
    """Write the halted layers' keys/values of a fresh prefill from ``private`` into ``static``, each slot at
    its sequence position. ``key_pos``: long [B, K], the position each of ``private``'s key slots holds (-1:
    filler). Returns the holes (bool [B, max_len]) for kv="drop", None for kv="keep" (no position is empty but
    padding, which the stock mask leaves out)."""
    B = key_pos.shape[0]
    slot = torch.where(key_pos >= 0, key_pos, length)  # fillers go to one scratch column, dropped below
    for layer_index in range(first_halted, len(static.layers)):
        source, target = private.layers[layer_index], static.layers[layer_index]
        if not target.is_initialized:
            target.lazy_initialization(source.keys, source.values)
        for buffer, x in ((target.keys, source.keys), (target.values, source.values)):
            placed = x.new_zeros(B, x.shape[1], length + 1, x.shape[-1])
            placed.scatter_(2, slot[:, None, :, None].expand_as(x), x)
            buffer[:, :, :length].copy_(placed[:, :, :length])  # in place: the buffers' addresses are static
        target.cumulative_length.fill_(length)
    if not drop:
        return None
    held = torch.zeros(B, length + 1, dtype=torch.bool, device=key_pos.device)
    held.scatter_(1, slot, True)
    later = torch.ones(B, max_length(static) - length, dtype=torch.bool, device=key_pos.device)
    return torch.cat([held[:, :length], later], 1)


def holes_of(cache) -> torch.Tensor | None:
    return getattr(cache, _HOLES, None)


def set_holes(cache, holes: torch.Tensor | None) -> None:
    """Put ``holes`` on ``cache`` (None clears them); beam search's reordering then reorders them too."""
    setattr(cache, _HOLES, holes)
    if holes is not None and not getattr(cache, _REORDER_WRAPPED, False):
        reorder = cache.reorder_cache

        def reorder_with_holes(beam_idx):
            reorder(beam_idx)
            held = holes_of(cache)
            if held is not None:
                setattr(cache, _HOLES, held.index_select(0, beam_idx.to(held.device)))

        cache.reorder_cache = reorder_with_holes
        setattr(cache, _REORDER_WRAPPED, True)


def with_holes(mask, holes: torch.Tensor, position_ids):
    """The stock mask of a halted layer ([B, 1, Q, S], bool or additive; or None) without the empty slots."""
    allowed = holes[:, None, None, :]
    if mask is None:  # SDPA left the mask out: causal over the static slots, from the query positions
        slots = torch.arange(holes.shape[1], device=holes.device)
        return allowed & (slots <= position_ids[:, None, :, None])
    if mask.dtype == torch.bool:
        return mask & allowed
    return mask.masked_fill(~allowed, torch.finfo(mask.dtype).min)


class HoleMasks:
    """Pre-hooks on the halted layers that leave a kv="drop" static cache's empty slots out of their masks.
    A call on any other cache finds no holes and passes through (one attribute read per layer). Installed at a
    kv="drop" model's first static prompt and kept until ``restore``: torch.compile does not guard on hooks, so
    hooks missing when the decode step was traced would stay missing from it."""

    def __init__(self, halted_layers, cache_kw: str):
        self.halted_layers, self.cache_kw = halted_layers, cache_kw
        self._hooks: list = []
        self._last = None  # (stock mask, holes, combined) of the latest layer: the next layers reuse it

    def install(self) -> None:
        if not self._hooks:
            self._hooks = [layer.register_forward_pre_hook(self._mask, with_kwargs=True)
                           for layer in self.halted_layers]

    def remove(self) -> None:
        while self._hooks:
            self._hooks.pop().remove()
        self._last = None

    def _mask(self, module, args, kwargs):
        holes = holes_of(kwargs.get(self.cache_kw, kwargs.get("past_key_values")))
        if holes is None:
            return None
        mask = kwargs.get("attention_mask")
        if torch.compiler.is_compiling():  # traced once into the step: the compiler shares the work
            kwargs["attention_mask"] = with_holes(mask, holes, kwargs.get("position_ids"))
            return args, kwargs
        last = self._last
        if last is None or last[0] is not mask or last[1] is not holes or mask is None:
            last = self._last = (mask, holes, with_holes(mask, holes, kwargs.get("position_ids")))
        kwargs["attention_mask"] = last[2]  # every halted layer of one step gets the same mask: one op a step
        return args, kwargs


def _calling(model):
    # model.forward, not model(): the model's always-call post-hook would make dynamo guard on its id, so every
    # new handle would recompile. dashvl's model hooks do nothing in a compiled step; the model's hooks of your
    # own do not run in it either (hooks on its modules do)
    def call(*args, **kwargs):
        return model.forward(*args, **kwargs)
    return call


_CODES: dict = {}  # key -> the code object that torch.compile caches this kind of decode step on
# model -> {(key, compile options): the compiled function}. One torch.compile per model, setting kind and
# options, shared by later handles: dynamo's compiled code is tied to the torch.compile call that made it.
_COMPILED: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


class CompiledDecode:
    """Stands in for ``model.get_compiled_call`` (which generate() asks for its compiled decode step) while a
    kv="drop" handle is installed: torch.compile of a function whose code object is kept per ``key`` (the
    halted layers and their cache keyword), so handles with the same halted layers share the compiled code and
    nothing else does."""

    def __init__(self, model, key):
        self.model, self.key = model, key

    def __call__(self, compile_config=None):
        config = compile_config or self.model._default_compile_config()
        options = config.to_dict()
        compiled = _COMPILED.setdefault(self.model, {})
        slot = (self.key, repr(sorted(options.items())))
        if slot not in compiled:
            template = _calling(self.model)
            if self.key not in _CODES:
                _CODES[self.key] = template.__code__.replace(co_name=f"dashvl_decode_{len(_CODES)}")
            code = _CODES[self.key]
            function = types.FunctionType(code, template.__globals__, code.co_name, None, template.__closure__)
            compiled[slot] = torch.compile(function, **options)
        return compiled[slot]

    def install(self) -> None:
        self.model.__dict__["get_compiled_call"] = self

    def remove(self) -> None:
        if self.model.__dict__.get("get_compiled_call") is self:
            del self.model.__dict__["get_compiled_call"]
