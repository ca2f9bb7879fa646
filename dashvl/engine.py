"""The halting engine: hooks on a model's decoder layers that gather, run and scatter active tokens.

Flow of one model call (a prefill, a second-turn prompt or a decode step):

1. model pre-hook: read token ids and the 2-D padding mask; count eligible tokens per row on the host
   (the only host sync, taken before the GPU has work queued) so every later shape is known in advance.
   (The language model's own pre-hook does the same when it is called directly.)
2. layer 0 pre-hook: note the cache and how many tokens it already holds.
3. layer l_s attention hook: Δ = ||U||₂ per token; select the lowest-Δ eligible tokens; build gather indices.
4. layer l_s+1 pre-hook: gather hidden states, cos/sin and the frozen tokens' inputs; build one mask for all
   halted-region layers. Every halted-region layer pre-hook swaps in those keyword arguments (and, for
   kv="keep", writes the frozen tokens' keys/values into its cache first).
5. last layer hook: scatter the active tokens back over the frozen states of layer l_s.

On a CUDA device a fresh prefill with few active slots takes another route from step 4 on
(``dashvl.graphs``): the language model's pre-hook swaps its layer list for layers 0..l_s plus a runner,
which gathers as in step 4, replays the halted layers captured as one CUDA graph, stores their keys/values
in the cache and scatters; the post-hook puts the layer list back.

Halted-region layers (> l_s) keep a shorter cache. Which sequence position each of its slots holds is kept
per cache object (``_Session.key_pos``), so decode steps and later turns get the right mask.
Knows no model family: everything family-specific comes from ``adapters``.
"""
from __future__ import annotations

import functools
import inspect
import weakref

import torch
from torch import nn
from transformers.cache_utils import DynamicCache, DynamicLayer, DynamicSlidingWindowLayer

from . import graphs, methods, policy
from .adapters import SUPPORTED_ATTENTION, Adapter
from .config import DashConfig
from .trace import HaltTrace, build_spans, visual_runs
from .vision import VisionHalting

__all__ = ["DashHandle"]

# Cache layers that grow by concatenation. Sliding ones behave the same while the sequence fits in the
# window, which the first-layer hook enforces.
_DYNAMIC_LAYERS = (DynamicLayer, DynamicSlidingWindowLayer)


class _Session:
    """Layout of the halted-region caches of one cache object: long [B, K] sequence positions, -1 = unused slot."""

    __slots__ = ("key_pos", "all_valid")

    def __init__(self, key_pos: torch.Tensor, all_valid: bool):
        self.key_pos, self.all_valid = key_pos, all_valid


class _Call:
    """State of one model call. Lives from the model pre-hook to the model post-hook."""

    def __init__(self, B: int, T: int, real, kinds, grid_kwargs):
        self.B, self.T = B, T
        self.real, self.kinds, self.grid_kwargs = real, kinds, grid_kwargs
        self.started = False       # set when the language model begins running this call
        self.num_halt = None       # long [B] on the device: halted counts per row, when this call halts anything
        self.cache = None
        self.past_len = 0
        self.session = None
        self.scores = None
        self.active = None
        self.overrides = None      # keyword arguments swapped into every halted-region layer
        self.keep_cache = None     # where kv="keep" writes the frozen tokens' keys/values
        self.past_real = None      # bool [B, past] from the 2-D mask, when the call carried one
        self.graph = False         # the halted layers run as one CUDA graph (dashvl.graphs) in this call
        self.lazy = None           # ratio 0: the input ids, from which the trace works out token kinds


class DashHandle:
    """DASH installed on one model. Made by ``dashvl.compress``; undone by ``remove()`` / ``dashvl.restore``.

    Attributes:
        config: the DashConfig in force.
        layer: the resolved activation layer l_s.
        trace: HaltTrace of the last prefill, or None before any.
    """

    def __init__(self, model: nn.Module, config: DashConfig, adapter: Adapter, layers: nn.ModuleList, layer: int):
        self.model, self.config, self.adapter, self.layer = model, config, adapter, layer
        self.method = methods.get(config.method)
        self._layers = layers
        self._num_layers = len(layers)
        self._backend_config = layers[0].self_attn.config
        params = inspect.signature(layers[0].forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"
        self._image_id = adapter.image_token_id(model)
        self._video_id = adapter.video_token_id(model)
        self._window = adapter.sliding_window(model)
        self._sessions: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._call: _Call | None = None
        self._trace_parts = None
        self._trace: HaltTrace | None = None
        self._trace_key = None
        self._hooks: list = []
        self._owner = adapter.language_model(model)  # the module whose .layers the stock loop runs
        self._graphs = None
        self._vision = None
        if config.vision_ratio > 0:
            spec = adapter.vision_spec(model)
            self._vision = VisionHalting(spec, config.vision_ratio, config.resolve_vision_layer(len(spec.blocks)),
                                         self.method, config.seed)

    # ----------------------------------------------------------------- install / remove

    def _install(self) -> None:
        m, layers, ls = self.model, self._layers, self.layer
        lm = self.adapter.language_model(m)
        try:
            self._hooks += [
                m.register_forward_pre_hook(self._on_call, with_kwargs=True),
                m.register_forward_hook(self._on_call_end, always_call=True),
                lm.register_forward_pre_hook(self._on_language_model, with_kwargs=True),
                lm.register_forward_hook(self._on_call_end, always_call=True),
                layers[0].register_forward_pre_hook(self._on_first_layer, with_kwargs=True),
                layers[ls].self_attn.register_forward_hook(self._on_activation_attention, with_kwargs=True),
            ]
            # ratio 0 never halts, so nothing above l_s needs a hook (hooks cost host time per layer)
            halting = self.config.ratio > 0
            for i in range(ls + 1, self._num_layers if halting else 0):
                hook = functools.partial(self._on_halted_layer, i)
                self._hooks.append(layers[i].register_forward_pre_hook(hook, with_kwargs=True))
            if halting:
                self._hooks.append(layers[-1].register_forward_hook(self._on_last_layer))
            if halting and self.config.cuda_graph is not False:
                first = ls + 1
                self._graphs = graphs.bank_for(layers, first, self._cache_kw, self.adapter.halted_kv)
                runner = graphs.HaltedRunner(self, getattr(layers[first], "attention_type", None))
                self._short_layers = nn.ModuleList(list(layers[:first]) + [runner])
                self._graph_devices = {p.device for p in layers[first:].parameters()}
            if self._vision is not None:
                self._hooks += self._vision.install()
        except BaseException:
            self.remove()
            raise

    def remove(self) -> None:
        """Remove every hook this handle added; the model is the unmodified one again."""
        while self._hooks:
            self._hooks.pop().remove()
        self._restore_layers()
        self._graphs = None
        self._call = None
        from . import api  # late: api imports this module
        api._forget(self)

    def __enter__(self) -> "DashHandle":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()

    @property
    def active(self) -> bool:
        """Whether the hooks are installed."""
        return bool(self._hooks)

    @property
    def trace(self) -> HaltTrace | None:
        """HaltTrace of the last prefill (built on first access, so the forward never waits for the CPU copy)."""
        vision_parts = self._vision.trace_parts if self._vision is not None else None
        key = (id(self._trace_parts), id(vision_parts))
        if self._trace_parts is not None and key != self._trace_key:
            self._trace = self._build_trace(*self._trace_parts)
            self._trace_key = key
        return self._trace

    @property
    def vision_trace(self):
        """VisionTrace of the vision tower's last call (also set when only the tower ran), or None."""
        return self._vision.trace(len(self._vision.spec.blocks)) if self._vision is not None else None

    @property
    def vision_layer(self) -> int | None:
        """The resolved vision block v_s, or None when the vision tower is not halted."""
        return self._vision.block if self._vision is not None else None

    def __repr__(self) -> str:
        c = self.config
        return (f"DashHandle(method={c.method!r}, ratio={c.ratio}, layer={self.layer}/{self._num_layers}, "
                f"kv={c.kv!r}, scope={c.scope!r}, active={self.active})")

    # ----------------------------------------------------------------- checks shared with compress()

    def check_backend(self) -> None:
        backend = self._backend_config._attn_implementation
        if backend not in SUPPORTED_ATTENTION:
            raise ValueError(f"attention backend {backend!r} is not supported by dashvl; use one of "
                             f"{', '.join(SUPPORTED_ATTENTION)} (attn_implementation=... when loading)")
        if backend.startswith("flash") and self.config.kv == "keep":
            raise ValueError("kv='keep' needs an explicit attention mask, which flash_attention_2 cannot take; "
                             "use kv='drop' with flash_attention_2, or attn_implementation='sdpa' / 'eager'")

    def check_generation(self) -> None:
        gen = getattr(self.model, "generation_config", None)
        impl = getattr(gen, "cache_implementation", None)
        if impl not in (None, "dynamic"):
            raise ValueError(f"generation_config.cache_implementation={impl!r} is not supported: dashvl needs "
                             "the dynamic cache (halted layers keep shorter caches); set it to None")
        if getattr(gen, "prefill_chunk_size", None):
            raise ValueError("chunked prefill (generation_config.prefill_chunk_size) is not supported: DASH "
                             "halts tokens of a whole prompt at once; set prefill_chunk_size to None")

    # ----------------------------------------------------------------- hooks

    def _on_call(self, module, args, kwargs):
        cfg = self.config
        if torch.compiler.is_compiling():
            raise RuntimeError("dashvl does not run under torch.compile; compile a restored model instead")
        if kwargs.get("output_hidden_states") or kwargs.get("output_attentions") or \
                getattr(self.model.config, "output_hidden_states", False):
            raise ValueError("output_hidden_states / output_attentions are not available on a compressed model "
                             "(halted layers run on fewer tokens); read handle.trace, or restore the model first")
        self.check_backend()
        self.check_generation()
        self._call = self._prepare(args, kwargs, self.adapter.trace_inputs(kwargs))
        return None

    def _on_language_model(self, module, args, kwargs):
        """The decoder stack starts: use the call the model prepared, or prepare one (called directly)."""
        call = self._call
        if call is None or call.started:
            call = self._call = self._prepare(args, kwargs, {})
        if call is not None:
            call.started = True
            width = self._graph_width(call, kwargs)
            if width is not None:
                call.graph = True
                call.all_valid = call.all_valid and width == call.width
                call.width = width
                if self.config.kv == "keep":  # the frozen slots too, so nearby lengths share a graph
                    h_width = min(graphs.bucket_width(call.h_width), call.T)
                    call.h_all_valid = call.h_all_valid and h_width == call.h_width
                    call.h_width = h_width
                self._owner.layers = self._short_layers  # restored by _on_call_end
        return None

    def _graph_width(self, call: _Call, kwargs) -> int | None:
        """The slots per row when this call's halted layers replay a CUDA graph (dashvl.graphs), else None."""
        if self._graphs is None or call.num_halt is None:
            return None
        device = call.real.device
        if device.type != "cuda" and not graphs.EMULATE:
            if self.config.cuda_graph:
                raise ValueError(f"cuda_graph=True needs the model on a CUDA device; this call runs on {device}. "
                                 "Use cuda_graph=None (automatic) or False")
            return None
        bucket = graphs.bucket_width(call.width)  # nearby lengths share a graph
        if call.B * bucket > graphs.MAX_SLOTS:
            return None  # GPU-bound: the layers one by one are as fast, without filler slots
        cache = kwargs.get(self._cache_kw, kwargs.get("past_key_values"))
        fresh = cache is None or (isinstance(cache, DynamicCache) and cache.get_seq_length() == 0)
        if (fresh and not torch.is_grad_enabled() and not torch.is_autocast_enabled(device.type)
                and not self._layers[self.layer + 1].training  # dropout draws random numbers per call
                and self._graph_devices == {device}):
            return min(bucket, call.T)
        return None

    def _restore_layers(self) -> None:
        if self._owner.layers is not self._layers:
            self._owner.layers = self._layers

    def _prepare(self, args, kwargs, grid_kwargs) -> _Call | None:
        """Token kinds, eligibility and, when anything halts, every shape of the halted region."""
        cfg = self.config
        ids = kwargs.get("input_ids", args[0] if args else None)
        embeds = kwargs.get("inputs_embeds")
        shaped = ids if ids is not None else embeds
        if shaped is None:
            return None
        B, T = shaped.shape[:2]
        mask = kwargs.get("attention_mask")
        if isinstance(mask, dict):  # generate() may hand the language model its prepared masks
            mask = None
        if mask is not None and mask.dim() != 2:
            raise ValueError(f"dashvl needs a 2-D attention_mask [batch, length] (1 = token, 0 = padding); "
                             f"got shape {tuple(mask.shape)}")
        if T == 1:  # a decode step: nothing halts and nothing is traced, so no per-token bookkeeping
            return _Call(B, T, None, None, grid_kwargs)
        real = _real_tokens(mask, B, T, shaped.device)
        if cfg.ratio == 0:
            # nothing halts: token kinds are only for the trace, worked out if it is read (no launches now)
            call = _Call(B, T, real, None, grid_kwargs)
            call.lazy = ids
            return call
        kinds = policy.token_kinds(ids, real, self._image_id, self._video_id)
        call = _Call(B, T, real, kinds, grid_kwargs)
        if mask is not None and mask.shape[1] > T:  # padding of earlier turns, for caches built without halting
            call.past_real = mask[:, :-T].bool()

        if cfg.ratio > 0 and T > 1:
            eligible = policy.eligible_tokens(kinds, cfg.scope, cfg.protect_last)
            if mask is None and cfg.scope == "all":
                n_real, n_elig = [T] * B, [max(T - cfg.protect_last, 0)] * B
            else:  # the one host sync of a prefill, taken before any GPU work of this call is queued
                n_real, n_elig = torch.stack([real.sum(1), eligible.sum(1)]).tolist()
            num_halt = [cfg.num_halted(e) for e in n_elig]
            if any(num_halt):
                n_active = [r - h for r, h in zip(n_real, num_halt)]
                # the same counts on the device: a fill when rows agree (no copy at all); else a small copy,
                # right after the sync above, when the GPU has nothing queued to wait for
                call.num_halt = torch.full((B,), num_halt[0], device=shaped.device) if len(set(num_halt)) == 1 \
                    else torch.tensor(num_halt, device=shaped.device)
                call.eligible = eligible
                call.width = max(n_active)                       # slots per row above l_s
                call.all_valid = min(n_active) == call.width     # no filler slots anywhere
                call.h_width = max(num_halt)                     # kv="keep": frozen key slots per row
                call.h_all_valid = min(num_halt) == call.h_width
        return call

    def _on_call_end(self, module, args, output):
        self._restore_layers()
        self._call = None

    def _on_first_layer(self, module, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        B, T = hidden.shape[:2]
        call = self._call
        if call is None:  # the layers were called on their own: no halting plan, nothing halts
            return None
        if (call.B, call.T) != (B, T):
            raise RuntimeError(f"the language model received {B}x{T} tokens but the model call had "
                               f"{call.B}x{call.T} ids; dashvl needs prompts whose visual tokens the processor "
                               "already expanded")
        cache = kwargs.get(self._cache_kw, kwargs.get("past_key_values"))
        past = 0
        if cache is not None:
            if not isinstance(cache, DynamicCache) or \
                    any(type(layer) not in _DYNAMIC_LAYERS for layer in cache.layers[self.layer + 1:]):
                raise ValueError(f"{type(cache).__name__} is not supported: dashvl needs a DynamicCache "
                                 "(halted layers keep shorter caches); static and quantized caches are not")
            past = cache.get_seq_length()
            if past == 0:
                self._sessions.pop(cache, None)
            else:
                call.session = self._sessions.get(cache)
                stored = cache.get_seq_length(self.layer + 1)
                expected = call.session.key_pos.shape[1] if call.session is not None else past
                if stored != expected or (call.session is not None and call.session.key_pos.shape[0] != B):
                    raise RuntimeError("this cache was not built by this compressed model (its halted layers hold "
                                       f"{stored} tokens, {expected} expected); start from an empty cache")
        if self._window is not None and past + T > self._window:
            raise ValueError(f"this model uses sliding-window attention (window {self._window}); dashvl is exact "
                             f"only for sequences within the window, and this one has {past + T} tokens")
        call.cache, call.past_len = cache, past
        return None

    def _on_activation_attention(self, module, args, kwargs, output):
        call = self._call
        if call is None or call.T <= 1:
            return None  # decode steps: generated tokens never halt
        cos, sin = kwargs.get("position_embeddings") or (None, None)
        hidden = (args[0] if args else kwargs["hidden_states"]) if self.method.needs_attention_input else None
        update = output[0] if isinstance(output, tuple) else output
        call.scores = self.method.score(methods.ScoreContext(module, update, hidden, cos, sin, call.real,
                                                             self.config.seed, self.adapter))
        if call.num_halt is not None:
            halted = policy.select_halted(call.scores, call.eligible, call.num_halt)
            call.active = call.real & ~halted
            call.index, call.valid = policy.compact_index(call.active, call.width)
            if self.config.kv == "keep":
                call.h_index, call.h_valid = policy.compact_index(halted, call.h_width)
        # ratio 0: kinds is None, and the trace works out kinds from the call's ids
        self._trace_parts = (call.scores, call.active if call.active is not None else call.real,
                             call.kinds, call.lazy, call.grid_kwargs)
        return None

    def _on_halted_layer(self, i, module, args, kwargs):
        call = self._call
        if call is None or call.graph:  # graph calls: the runner prepared the layers' inputs itself
            return None
        if i == self.layer + 1:
            args = self._enter_halted_region(call, args, kwargs)
        if call.overrides is None:
            return None
        if call.keep_cache is not None:
            k, v = self.adapter.halted_kv(module, call.h_hidden, call.h_cos, call.h_sin)
            call.keep_cache.update(k, v, i)
        kwargs.update(call.overrides)
        return args, kwargs

    def _on_last_layer(self, module, args, output):
        call = self._call
        if call is None or call.active is None or call.graph:
            return None
        out = output[0] if isinstance(output, tuple) else output
        full = _scatter_active(call, out)
        return (full,) + tuple(output[1:]) if isinstance(output, tuple) else full

    def _run_halted_graph(self, hidden, kwargs):
        """In place of layers l_s+1..L-1 (a graph call): gather, replay the captured layers, scatter."""
        call = self._call
        args = self._enter_halted_region(call, (hidden,), kwargs)
        cos, sin = call.overrides["position_embeddings"]
        frozen = (call.h_hidden, call.h_cos, call.h_sin) if self.config.kv == "keep" else None
        out, kv = self._graphs.run(args[0], cos, sin, call.overrides["attention_mask"], frozen,
                                   call.cache is not None, self._backend_config._attn_implementation)
        if call.cache is not None:
            graphs.store_kv(call.cache, self.layer + 1, kv)
        return _scatter_active(call, out)

    # ----------------------------------------------------------------- the halted region's inputs

    def _enter_halted_region(self, call: _Call, args, kwargs):
        """Prepare the keyword arguments of every layer above l_s for this call; returns the layer's args."""
        session, compact = call.session, call.active is not None
        call.overrides = None
        if not compact and session is None:
            return args  # nothing halted, now or earlier in this cache: the layers run as usual
        hidden = args[0] if args else kwargs["hidden_states"]
        B, T, past, device = call.B, call.T, call.past_len, hidden.device
        if session is not None:
            past_keys, past_valid = session.key_pos, session.all_valid
        elif past:  # earlier turns halted nothing: the halted layers' caches are full length, padding included
            past_keys, past_valid = torch.arange(past, device=device).expand(B, past), True
            if call.past_real is not None and call.past_real.shape[1] == past:
                past_keys, past_valid = torch.where(call.past_real, past_keys, -1), False
        else:
            past_keys, past_valid = None, True

        overrides = {"position_ids": None}
        if compact:
            cos, sin = kwargs["position_embeddings"]
            call.frozen = hidden
            hidden = _gather_tokens(hidden, call.index)
            overrides["position_embeddings"] = (_gather_tokens(cos, call.index), _gather_tokens(sin, call.index))
            q_pos = torch.where(call.valid, call.index + past, -1)
            new_keys, new_valid = q_pos, call.all_valid
            if self.config.kv == "keep":
                call.h_hidden = _gather_tokens(call.frozen, call.h_index)
                call.h_cos, call.h_sin = _gather_tokens(cos, call.h_index), _gather_tokens(sin, call.h_index)
                new_keys = torch.cat([torch.where(call.h_valid, call.h_index + past, -1), q_pos], 1)
                new_valid = new_valid and call.h_all_valid
                if call.graph:  # the graph's recorder carries them
                    call.keep_cache = None
                elif call.cache is None:  # no cache asked for: a private one carries the frozen keys/values
                    call.keep_cache = DynamicCache()
                    overrides[self._cache_kw] = call.keep_cache
                else:
                    call.keep_cache = call.cache
        else:  # a call that halts nothing on a cache whose halted layers are short (decode steps)
            positions = torch.arange(past, past + T, device=device).expand(B, T)
            q_pos = torch.where(call.real, positions, -1) if T > 1 else positions
            new_keys, new_valid = q_pos, T == 1
        key_pos = torch.cat([past_keys, new_keys], 1) if past_keys is not None else new_keys
        keys_valid = past_valid and new_valid
        if call.cache is not None:
            self._sessions[call.cache] = _Session(key_pos, keys_valid)
        overrides["attention_mask"] = self._mask(key_pos, q_pos, keys_valid, past_keys is None, hidden.dtype)
        call.overrides = overrides
        if compact:
            args = (hidden,) + tuple(args[1:]) if args else args
            if not args:
                kwargs["hidden_states"] = hidden
        return args

    def _mask(self, key_pos, q_pos, keys_valid: bool, fresh: bool, dtype):
        """Attention mask of the halted layers in the backend's format, or None where plain causal is exact.

        Args:
            key_pos: long [B, K], the sequence position held by each key slot (-1: unused slot).
            q_pos: long [B, Q], the position of each query slot (-1: filler slot).
        """
        backend = self._backend_config._attn_implementation
        Q, K = q_pos.shape[1], key_pos.shape[1]
        # A fresh kv="drop" prefill: keys are the query slots, in position order with fillers last
        # (policy.compact_index), so causal-over-slots is exact for every real query, padded rows included.
        slot_causal = fresh and Q == K
        if backend.startswith("flash"):
            # Queries are the last Q key slots (kv="drop"), so a 2-D key mask with causal alignment is exact.
            return None if keys_valid or slot_causal else key_pos >= 0
        if (keys_valid and Q == 1) or (slot_causal and backend == "sdpa"):
            return None  # decode against valid keys, or a fresh causal prefill: SDPA's is_causal / no mask
        key_ok = key_pos[:, None, :] >= 0
        allowed = key_ok & (key_pos[:, None, :] <= q_pos[:, :, None])
        allowed = torch.where((q_pos < 0)[:, :, None], key_ok, allowed)  # filler queries: any key, never NaN
        allowed = allowed[:, None]
        if backend == "sdpa":
            return allowed
        return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill_(
            ~allowed, torch.finfo(dtype).min)

    # ----------------------------------------------------------------- trace

    def _build_trace(self, scores, active, kinds, ids, grid_kwargs) -> HaltTrace:
        if kinds is None:  # a ratio-0 call
            kinds = policy.token_kinds(ids, active, self._image_id, self._video_id)
        kinds = kinds.cpu()
        real = kinds != policy.KIND_PAD
        active = active.cpu() & real
        scores = scores.cpu().masked_fill(~real, float("nan"))
        L, ls = self._num_layers, self.layer
        per_layer = torch.cat([real.sum(1, keepdim=True).expand(-1, ls + 1),
                               active.sum(1, keepdim=True).expand(-1, L - ls - 1)], 1)
        grids = self.adapter.visual_grids(self.model, grid_kwargs, [visual_runs(row) for row in kinds])
        c = self.config
        vision = self.vision_trace
        return HaltTrace(layer=ls, num_layers=L, ratio=c.ratio, kv=c.kv, scope=c.scope, method=c.method,
                         scores=scores, active=active, kinds=kinds, tokens_per_layer=per_layer,
                         spans=build_spans(kinds, grids), vision=vision)


def _gather_tokens(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x [B or 1, T, d], index long [B, A] -> [B, A, d]."""
    B, A = index.shape
    return x.expand(B, -1, -1).gather(1, index[..., None].expand(B, A, x.shape[-1]))


def _real_tokens(mask, B: int, T: int, device) -> torch.Tensor:
    """bool [B, T]: the call's own tokens that are not padding (the 2-D mask's last T columns)."""
    return mask[:, -T:].bool() if mask is not None else torch.ones(B, T, dtype=torch.bool, device=device)


def _scatter_active(call: _Call, out: torch.Tensor) -> torch.Tensor:
    """The halted region's output [B, width, d] written into a copy of layer l_s's frozen states [B, T, d]
    at the call's gather indices; filler slots keep the frozen values."""
    frozen = call.frozen
    out = out.to(frozen.device)  # a model split over devices (device_map) ends the stack elsewhere
    idx = call.index[..., None].expand_as(out)
    if not call.all_valid:
        out = torch.where(call.valid[..., None], out, frozen.gather(1, idx))
    return frozen.scatter(1, idx, out)
