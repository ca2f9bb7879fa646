"""The halted layers as one CUDA graph: their Python runs once per shape instead of once per call.

At short prompts transformers' per-layer Python costs more host time than the GPU spends on a halted
layer, so halting alone cannot make a 1k-token prefill much faster (issue 8). Above l_s every shape
depends only on (batch, active width), which the engine knows before the GPU runs, so the layers above
l_s are captured once per shape and replayed: one launch instead of ~25 layers of dispatch.

Graphs belong to the model's layers, not to one ``compress`` call: compressing again (other settings, a
sweep) replays what was captured. They are freed by ``release(model)`` or with the model, and dropped
when the layers' weights move (``model.to(...)``).

Widths are rounded up to 16 steps per octave (``bucket_width``, ≤ 6.25% filler slots) so that prompts of
nearby lengths share a graph; kv="keep" rounds up the halted tokens' key slots the same way. Only fresh
prefills under no_grad with at most ``MAX_SLOTS`` active slots take this path; anything else (long active
sets, decode steps, later turns, autograd, autocast) runs the layers as usual.

Imported as ``dashvl.graphs`` too (the same module object, so ``dashvl.graphs.EMULATE = True`` takes effect).

The halted region runs in a ``region.HaltedRunner`` swapped into the decoder stack's layer list for the call
(restored by the stack's post-hook, also on errors), on both paths: here the runner gathers, replays and
scatters. No transformers code is copied or patched.
"""
from __future__ import annotations

import collections
import contextlib
import weakref

import torch
from torch import nn
from transformers.cache_utils import DynamicLayer

from ..adapters import frozen_hidden
from ..adapters.frozen_hidden import FrozenHidden
from . import keep_attention
from .region import HaltedRunner  # the runner of both paths; named here for older code

__all__ = ["real_slots", "bucket_width", "bank_for", "release", "GraphBank", "HaltedRunner", "store_kv"]

# Above this many active slots (batch × width) the halted layers are GPU-bound: replaying them saves no
# time and the bucket's filler slots cost some. Measured on an H200 at Qwen2-VL-7B's shapes (bench/RESULTS.md):
# even at 1,088 and 1,664 slots, 4-9% slower with the graph from 2,176 slots on.
MAX_SLOTS = 1536

# Tests set this to run the graph path without a GPU: static buffers and replays behave as on CUDA
# (outputs alias between calls), only the capture is replaced by running the layers eagerly.
EMULATE = False


def bucket_width(n: int) -> int:
    """Slots per row for ``n`` active tokens: ``n`` rounded up to 16 steps per octave (at least 8)."""
    if n <= 16:
        return max(8, -(-n // 8) * 8)
    step = 1 << max(n.bit_length() - 5, 3)
    return -(-n // step) * step


class _KVRecorder:
    """Stands in for the cache inside the captured layers of a fresh prefill. kv="keep": each layer's
    attention sees the halted tokens' keys/values (``prefix``, set before the layer runs) ahead of its own.
    With ``store``, copies what each layer attends to into one static buffer [layers, 2, B, kv_heads, K,
    head_dim], which ``store_kv`` later puts into the real cache."""

    def __init__(self, first_halted: int, num_layers: int, buffer: torch.Tensor | None = None, store: bool = True):
        self.first, self.num_layers, self.store = first_halted, num_layers, store
        self.buffer = buffer  # None: allocated by the first update (the warm-up run, before capture)
        self.prefix = None

    def update(self, keys, values, layer_idx, *args, **kwargs):
        if self.prefix is not None:
            keys, values = torch.cat([self.prefix[0], keys], -2), torch.cat([self.prefix[1], values], -2)
        if self.store:
            if self.buffer is None:
                self.buffer = keys.new_empty((self.num_layers, 2) + tuple(keys.shape))
            j = layer_idx - self.first
            self.buffer[j, 0].copy_(keys)
            self.buffer[j, 1].copy_(values)
        return keys, values


class _Entry:
    __slots__ = ("graph", "inputs", "output", "keys_values")

    def __init__(self, graph, inputs, output, keys_values):
        self.graph, self.inputs, self.output, self.keys_values = graph, inputs, output, keys_values


# decoder layer list -> {first halted layer: GraphBank}; weak, so a dropped model frees its graphs
_BANKS: "weakref.WeakKeyDictionary[nn.ModuleList, dict]" = weakref.WeakKeyDictionary()


def bank_for(layers: nn.ModuleList, first: int, cache_kw: str, halted_kv=None) -> "GraphBank":
    """The graphs of ``layers[first:]``, shared by every compress() of this model at this activation layer.
    ``halted_kv(decoder_layer, hidden, cos, sin) -> (keys, values)``: what halted tokens add to a decoder layer
    from their frozen state (kv="keep"; ``adapter.halted_kv``). A bank knows no handle."""
    banks = _BANKS.setdefault(layers, {})
    if first not in banks:
        banks[first] = GraphBank(layers, first, cache_kw, halted_kv)
    return banks[first]


def release(model: nn.Module) -> int:
    """Free the CUDA graphs captured for ``model`` (its GPU memory too). Returns how many were freed."""
    n = 0
    for module in model.modules():
        for bank in _BANKS.pop(module, {}).values() if isinstance(module, nn.ModuleList) else ():
            n += len(bank.entries)
            bank.clear()
    return n


class GraphBank:
    """Captured graphs of one model's halted layers, keyed by shape; least recently used ones are dropped.

    Graphs share one memory pool, so what one capture frees the next reuses; each keeps its static inputs
    and outputs (hidden states and the halted layers' keys/values) alive.
    """

    def __init__(self, layers, first: int, cache_kw: str, halted_kv=None, max_graphs: int = 24):
        self._layers = weakref.ref(layers)  # the bank lives in a dict keyed by these layers
        self.first, self.cache_kw, self.halted_kv, self.max_graphs = first, cache_kw, halted_kv, max_graphs
        self.entries: collections.OrderedDict = collections.OrderedDict()
        self.pool = None
        self.captures = self.replays = 0  # counts, for tests and benchmarks
        params = list(layers[first:].parameters())
        self._probe = (params[0], params[-1]) if params else ()
        self._where = self._weights_at()

    @property
    def layers(self):
        return self._layers()

    def _weights_at(self):
        return tuple((p.data_ptr(), p.dtype) for p in self._probe)

    def clear(self) -> None:
        self.entries.clear()
        self.pool = None

    def _body(self, hidden, cos, sin, mask, halted_hidden, halted_cos, halted_sin, recorder, hooks: bool = True,
              fast_keep: str | None = None):
        """``fast_keep``: the backend, when kv="keep" runs through keep_attention; ``mask`` is then the key positions
        [B, K] its ``KeepChunks`` is built from (inside the graph: the chunking is captured too)."""
        extra = {self.cache_kw: recorder, "use_cache": recorder is not None}
        switched = contextlib.nullcontext()
        if fast_keep is not None:
            mask = keep_attention.KeepChunks(mask, hidden.shape[1], fast_keep)
            switched = keep_attention.switched(self.layers[self.first].self_attn.config)
        shared = FrozenHidden(halted_hidden) if halted_hidden is not None else None  # one input norm's common part
        with switched:
            for decoder_layer in self.layers[self.first:]:
                if shared is not None:  # kv="keep": the halted tokens' keys/values come first in this layer
                    recorder.prefix = self.halted_kv(decoder_layer, shared, halted_cos, halted_sin)
                run = decoder_layer if hooks else decoder_layer.forward  # a replay calls no module: no hook fires
                hidden = run(hidden, attention_mask=mask, position_ids=None, position_embeddings=(cos, sin), **extra)
        return hidden

    def _recorder(self, keep: bool, store_keys: bool, buffer=None) -> _KVRecorder | None:
        n = len(self.layers) - self.first
        return _KVRecorder(self.first, n, buffer, store=store_keys) if keep or store_keys else None

    def run(self, hidden, cos, sin, mask, halted, store_keys: bool, backend: str, fast_keep: bool = False):
        """The halted layers on ``hidden`` [B, A, d]: (output [B, A, d], keys/values buffer or None).

        ``halted``: None (kv="drop") or, for kv="keep", the halted tokens' frozen hidden states [B, H, d] and
        their cos, sin [B, H, head_dim]. ``fast_keep``: kv="keep" through keep_attention, ``mask`` being the key
        positions [B, H + A] (``region.enter``).
        Both results are the graph's static outputs: the next replay overwrites them.
        """
        where = self._weights_at()
        if where != self._where:  # the weights moved (model.to): graphs read the old addresses
            self.clear()
            self._where = where
        inputs = (hidden, cos, sin, mask) + (tuple(halted) if halted is not None else (None,) * 3)
        key = (backend, tuple(None if x is None else (tuple(x.shape), x.dtype) for x in inputs), hidden.device,
               store_keys, torch.is_inference_mode_enabled(), fast_keep,
               # module settings a capture bakes in (bench.gpu_keep switches them between settings)
               keep_attention.CHUNK, keep_attention.SPAN, frozen_hidden.SHARE)
        fast = backend if fast_keep else None
        entry = self.entries.get(key)
        if entry is None:
            entry = self._capture(inputs, store_keys, fast)
            self.entries[key] = entry
            while len(self.entries) > self.max_graphs:
                self.entries.popitem(last=False)
            return entry.output, entry.keys_values  # the capture's warm-up already computed this call
        self.entries.move_to_end(key)
        self.replays += 1
        for static, x in zip(entry.inputs, inputs):
            if static is not None:
                static.copy_(x)
        if entry.graph is not None:
            with torch.cuda.device(hidden.device):  # the model's GPU, whichever one is current
                entry.graph.replay()
        else:  # emulation: the same static buffers, run eagerly
            recorder = self._recorder(halted is not None, store_keys, entry.keys_values)
            out = self._body(*entry.inputs, recorder, hooks=False, fast_keep=fast)
            entry.output.copy_(out)
        return entry.output, entry.keys_values

    def _capture(self, inputs, store_keys: bool, fast_keep: str | None = None) -> _Entry:
        with _plain_tensors():  # static inputs must stay writable outside inference mode too
            static = tuple(None if x is None else x.clone() for x in inputs)
        keep = static[4] is not None
        recorder = self._recorder(keep, store_keys)
        if EMULATE:
            out = self._body(*static, recorder, fast_keep=fast_keep)
            self.captures += 1
            return _Entry(None, static, out, recorder.buffer if store_keys else None)
        with torch.cuda.device(static[0].device):
            self._body(*static, recorder, fast_keep=fast_keep)  # warm-up: workspaces and lazy inits outside the capture
            if self.pool is None:
                self.pool = torch.cuda.graph_pool_handle()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self.pool):
                out = self._body(*static, recorder, fast_keep=fast_keep)
            graph.replay()  # capture records work without running it
        self.captures += 1
        return _Entry(graph, static, out, recorder.buffer if store_keys else None)


@contextlib.contextmanager
def _plain_tensors():
    if torch.is_inference_mode_enabled():
        with torch.inference_mode(False):
            yield
    else:
        yield


def real_slots(graph_real, width: int, frozen_width: int, device) -> torch.Tensor | None:
    """The key slots of a graph call's halted layers that hold a token in every row, when those are all the
    tokens (every row fills the same counts), else None.

    A graph runs on bucketed widths, so its key slots end in fillers (``width`` active slots, after the
    ``frozen_width`` halted ones for kv="keep"). Kept in the cache, fillers would make every decode step build
    and apply a mask (SDPA then leaves its flash kernel for a slower one: about 10% of a 7B step, measured);
    without them a batch-1 step runs unmasked like the unmodified model's."""
    real_width, real_valid, real_frozen, frozen_valid = graph_real
    if not (real_valid and frozen_valid) or (real_width == width and real_frozen == frozen_width):
        return None
    slots = torch.arange(real_width, device=device) + frozen_width
    if frozen_width:
        slots = torch.cat([torch.arange(real_frozen, device=device), slots])
    return slots


def store_kv(cache, first: int, keys_values: torch.Tensor, slots: torch.Tensor | None = None) -> None:
    """Put the halted layers' keys/values (a graph's static buffer [layers, 2, B, kv_heads, K, head_dim]) into
    a fresh DynamicCache, from cache layer ``first`` on; only the key ``slots`` given (``real_slots``)."""
    # one copy: the next replay reuses the buffer, this cache must not see it change
    keys_values = keys_values.clone() if slots is None else keys_values.index_select(4, slots)
    for j in range(keys_values.shape[0]):
        keys, values = keys_values[j, 0], keys_values[j, 1]
        cache_layer = cache.layers[first + j] if first + j < len(cache.layers) else None
        if type(cache_layer) is DynamicLayer and not getattr(cache, "offloading", False):
            cache_layer.lazy_initialization(keys, values)
            cache_layer.keys, cache_layer.values = keys, values
        else:  # layers made on first use (DynamicCache() without a config), sliding or offloaded layers
            cache.update(keys, values, first + j)
