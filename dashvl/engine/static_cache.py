"""A ``StaticCache`` (``generate(..., cache_implementation="static")``, whose decode step transformers compiles).

Every layer of a static cache holds one slot per sequence position, and the stock decode step attends to
slots 0..position. So a halted prefill runs the halted region against a private ``DynamicCache`` as usual,
then ``store`` writes each halted layer's keys/values into the static layer *at their sequence positions*:

- kv="keep": every position has a key in every layer (halted tokens' from their frozen state), so the
  static cache is a stock one and decode steps are the stock steps: no hook of dashvl's does any work, and
  transformers' compiled decode step runs as it is.
- kv="drop": the halted layers hold only the active tokens' keys, so their static layers are *compact*:
  ``store_compact`` allocates them at (active slots + new tokens) instead of (prompt + new tokens), copies the
  private cache's slots as they are, and sets each layer's write counter (``cumulative_length``) to the active
  count, so the stock ``StaticLayer.update`` appends each decode step's key after them. At ρ = 0.75 a decode
  step reads a quarter of the halted layers' prompt keys, and the cache takes a quarter of the memory there.
  ``HoleMasks`` (a pre-hook on each halted layer, installed once such a cache exists) gives those layers their
  mask over the compact slots: the held slots (a padded row's unused ones are holes) up to the layer's counter.
  One small mask a step, shared by every halted layer, traced into the compiled step like the rest of it.

The holes (bool [B, compact width], True = the slot holds a key or will) live on the cache object, so beam
search reorders them with the cache and a new prompt on the cache clears them.

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

__all__ = ["is_static", "check_static", "store", "store_compact", "compact_width", "holes_of", "set_holes",
           "compact_mask", "HoleMasks", "CompiledDecode"]

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


def store(private: DynamicCache, static, first_halted: int, key_pos: torch.Tensor, length: int) -> None:
    """kv="keep": write the halted layers' keys/values of a fresh prefill from ``private`` into ``static``, each
    slot at its sequence position (``key_pos``: long [B, K], the position each of ``private``'s key slots holds;
    -1: filler). Every position then holds a key but padding, which the stock mask leaves out."""
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


# model -> {(setting key, stock width): the widest compact layer made so far}. Later prompts with the same stock
# width (transformers keeps one for all requests up to the longest so far) reuse it when it holds them, so the
# compiled decode step sees one shape: it recompiles only when a prompt needs a wider one, in steps of 1/32 of
# the stock width (what a step reads beyond its need is at most that).
_WIDTHS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_RUNGS = 32


def compact_width(model, key, needed: int, full: int) -> int:
    """The width of a kv="drop" prompt's compact layers: ``needed`` (active slots + decode slots) rounded up to
    a 1/32 of ``full`` (the stock layers' width), or the widest one this model's setting ``key`` made before at
    that stock width; at most ``full``."""
    widths = _WIDTHS.setdefault(model, {})
    rung = -(-full // _RUNGS)
    width = min(full, max(-(-needed // rung) * rung, widths.get((key, full), 0)))
    widths[key, full] = width
    return width


def store_compact(private: DynamicCache, static, first_halted: int, key_pos: torch.Tensor, length: int,
                  model, key) -> torch.Tensor:
    """kv="drop": make the halted static layers compact (``compact_width`` for ``model``'s setting ``key``: room
    for the K prompt key slots and every decode step's) and copy ``private``'s K key slots into slots 0..K-1 as
    they are (any order serves attention: the keys carry their rotary positions); decode steps write from slot K
    on. Returns the holes: bool [B, width], False at the slots no key will fill (fillers of padded rows).
    ``length``: the prompt's length, T."""
    B, K = key_pos.shape
    full = max_length(static)
    width = compact_width(model, key, K + full - length, full)
    for layer_index in range(first_halted, len(static.layers)):
        source, target = private.layers[layer_index], static.layers[layer_index]
        reuse = target.is_initialized and target.max_cache_len == width and target.keys.shape[0] == B
        if not reuse:  # new buffers (marked static by transformers), at the compact width
            target.max_cache_len = width
            target.lazy_initialization(source.keys, source.values)
        for buffer, x in ((target.keys, source.keys), (target.values, source.values)):
            buffer[:, :, :K].copy_(x)  # in place: the buffers' addresses are static
            if reuse:
                buffer[:, :, K:].zero_()
        target.cumulative_length.fill_(K)
    later = torch.ones(B, width - K, dtype=torch.bool, device=key_pos.device)
    return torch.cat([key_pos >= 0, later], 1)


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


def compact_mask(mask, holes: torch.Tensor, written: torch.Tensor, queries: int):
    """A halted layer's mask over its compact slots, for ``queries`` new tokens: the held slots (``holes``,
    bool [B, S]) that are written before each query's own (``written``: the layer's counter before this call,
    a 0-d tensor; query i sees slots < written + i + 1). Bool, or additive in ``mask``'s dtype where the stock
    mask is additive (eager); ``mask`` itself is over the stock slots and not used otherwise."""
    slots = torch.arange(holes.shape[1], device=holes.device)
    if queries == 1:  # a decode step: five small ops
        allowed = (holes & (slots <= written))[:, None, None, :]
    else:
        allowed = holes[:, None, None, :] & (slots <= written + torch.arange(queries, device=holes.device)[:, None])
    if mask is None or mask.dtype == torch.bool:
        return allowed
    return allowed.new_zeros(allowed.shape, dtype=mask.dtype).masked_fill_(~allowed, torch.finfo(mask.dtype).min)


class HoleMasks:
    """Pre-hooks on the halted layers that give them their mask over a kv="drop" static cache's compact slots
    (``compact_mask``). A call on any other cache finds no holes and passes through (one attribute read per
    layer). Installed at a kv="drop" model's first static prompt and kept until ``restore``: torch.compile does
    not guard on hooks, so hooks missing when the decode step was traced would stay missing from it."""

    def __init__(self, halted_layers, first_halted: int, cache_kw: str):
        self.halted_layers, self.first_halted, self.cache_kw = list(halted_layers), first_halted, cache_kw
        self._index = {id(layer): first_halted + i for i, layer in enumerate(self.halted_layers)}
        self._hooks: list = []
        self._last = None  # the mask of this step, made at the first halted layer: the others reuse it

    def install(self) -> None:
        if not self._hooks:
            self._hooks = [layer.register_forward_pre_hook(self._mask, with_kwargs=True)
                           for layer in self.halted_layers]

    def remove(self) -> None:
        while self._hooks:
            self._hooks.pop().remove()
        self._last = None

    def _mask(self, module, args, kwargs):
        cache = kwargs.get(self.cache_kw, kwargs.get("past_key_values"))
        holes = holes_of(cache)
        if holes is None:
            return None
        first = module is self.halted_layers[0]
        # under torch.compile every layer makes it (traced once into the step); eagerly the first halted layer
        # makes it and the others reuse it: every halted layer's counter is the same before its own update
        if first or self._last is None or torch.compiler.is_compiling():
            hidden = args[0] if args else kwargs["hidden_states"]
            written = cache.layers[self._index[id(module)]].cumulative_length
            made = compact_mask(kwargs.get("attention_mask"), holes, written, hidden.shape[1])
            if torch.compiler.is_compiling():
                kwargs["attention_mask"] = made
                return args, kwargs
            self._last = made
        kwargs["attention_mask"] = self._last
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
