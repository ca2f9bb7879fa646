"""The hooks of one compressed model: each hands its step of a call to the plan, the method, the halted
region or the graph path. Installed and removed by ``DashHandle``; holds the state of the call in flight.

Flow of one model call (a prefill, a second-turn prompt or a decode step):

1. model pre-hook (``on_call``): check the call; plan it (``plan.plan_call``): token kinds, eligibility, and
   the host sync that counts eligible tokens per row, so every later shape is known before the GPU has work
   queued. A decode step (T = 1) plans nothing per token.
2. decoder stack pre-hook (``on_decoder_stack``; it plans the call itself when the stack is called directly):
   check the cache, note how many tokens it holds and its ``CacheLayout``. For a prompt, attach the scoring
   hook to the activation layer's attention. When the call halts tokens, or the cache's halted layers are
   short, swap the stack's layer list for layers 0..l_s plus a ``region.HaltedRunner``.
3. activation-layer attention hook (prompts only): the method scores the tokens (``Method.score``); the plan
   selects the lowest-scored eligible tokens and builds the gather indices.
4. the runner, in place of layers l_s+1..L-1 (``run_region``): a decode step counts its key in the layout,
   swaps in the halted layers' mask (None against all-valid keys) and calls the layers as they are. A prompt
   enters the halted region (``region.enter``): gathers hidden states and cos/sin (and, for kv="keep", the
   halted tokens' frozen inputs: ``FrozenKeys``, whose keys/values it writes into each layer's cache layer
   first), builds one mask, calls the layers, and scatters the active tokens back over the frozen states.
   On a CUDA device a fresh prefill with few active slots replays the layers as one CUDA graph instead
   (``graphs``).
5. stack and model post-hooks (``on_stack_end``; ``on_model_end``, also on errors): the layer list and the
   attention's hooks as they were.

So the halted layers carry no hook of dashvl's, a decode step costs the stock per-layer Python plus two
hooks on the model and two on the stack, and at ratio 0 nothing above l_s is touched.

A StaticCache (``static_cache``): a prompt that halts runs the region on a private DynamicCache, then stores it
into the static layers (kv="keep": by position; kv="drop": compact, active slots only); decode steps are the stock
ones (kv="drop": the halted layers' mask over their compact slots, one small mask per step, from ``HoleMasks``, the
only hooks dashvl puts on decoder layers, on from a kv="drop" model's first static prompt until ``restore``).
Under torch.compile (transformers' compiled static decode step) every hook returns at once.
"""
from __future__ import annotations

import contextlib
import inspect
import threading
import weakref

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from transformers.cache_utils import DynamicCache

from .. import policy
from ..methods import ScoreContext
from . import checks, graphs, keep_attention, region, static_cache, windows
from .plan import CallPlan, plan_call
from .record import TraceParts

__all__ = ["CallFlow"]

_STEP_KERNELS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


class CallFlow:
    """The hook callbacks of one DashHandle, and the state they share.

    Attributes:
        plan: the ``CallPlan`` of the call in flight, or None between calls.
        trace_parts: ``TraceParts`` of the last scored prefill, or None.
        graphs: the ``GraphBank`` of the halted layers when the graph path is installed, else None.
        short_layers: layers 0..l_s plus the ``HaltedRunner``, swapped in for a call that halts or decodes on
            short halted caches; None at ratio 0.
    """

    def __init__(self, handle):
        model, decoder_layers = handle.model, handle.decoder_layers
        self.model, self.config, self.method, self.adapter = model, handle.config, handle.method, handle.adapter
        self.decoder_layers = decoder_layers
        self.first_halted = handle.layer + 1
        self.halted_layers = list(decoder_layers[self.first_halted:])
        self.activation_attention = decoder_layers[handle.layer].self_attn
        self.stack = handle.adapter.language_model(model)  # the decoder stack whose .layers the stock loop runs
        self.attention_config = decoder_layers[0].self_attn.config  # holds the backend in force
        params = inspect.signature(decoder_layers[0].forward).parameters
        self.cache_kw = "cache" if "cache" in params else "past_key_values"
        self.window = handle.adapter.sliding_window(model)
        # halted layers of several kinds (sliding windows, per-kind rotary embeddings), or None: all alike
        self.kinds = windows.RegionKinds.of(handle.adapter, model, self.first_halted)
        self.activation_window = handle.adapter.layer_windows(model)[handle.layer]
        self.kv_mode = handle.config.kv
        self.halted_kv = handle.adapter.halted_kv if self.kv_mode == "keep" else None  # what FrozenKeys calls
        self.token_kinds = handle.token_kinds
        self.layouts: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # cache -> region.CacheLayout
        self.plan: CallPlan | None = None
        self.prefills = 0  # counts scored prefills: the trace is rebuilt when this moves
        self.trace_parts: TraceParts | None = None
        self.graphs = self.short_layers = self._graph_devices = None
        self._swapped = False  # the stack runs short_layers in this call (a flag: reading stack.layers costs more)
        self.call_backend = self.backend  # read once per call (a config attribute read is slow, and per step)
        self._checked_caches: weakref.WeakSet = weakref.WeakSet()  # caches whose layers check_cache passed
        self._scoring = None  # the activation attention's hook, on during a prompt's call
        # methods that read Δ of the layers below l_s: those attentions, hooked during a prompt's call only
        self._history_attentions = [layer.self_attn for layer in decoder_layers[:handle.layer]] \
            if self.method.needs_history else []
        self._history_hooks: list = []
        self._history_sum = None
        # methods that read the residual stream entering layer l_s (and layer l_s - 1): pre-hooks during prompts
        reads = self.method.needs_layer_input or self.method.needs_block_update
        self._input_layers = ([decoder_layers[handle.layer]] if reads else []) + \
            ([decoder_layers[handle.layer - 1]] if self.method.needs_block_update and handle.layer > 0 else [])
        self._inputs: dict = {}
        # one call at a time: the state above is the call's own; a call from another thread meanwhile is refused
        self._owner_lock = threading.Lock()
        self._owner: int | None = None
        self._depth = 0
        self._in_model = False  # this call went through the model's pre-hook (not the stack's alone)
        # kv="drop" on a StaticCache: the halted layers' masks leave the halted slots out (installed on first use)
        self.hole_masks = self.compiled_decode = None
        if self.kv_mode == "drop":
            self.hole_masks = static_cache.HoleMasks(self.halted_layers, self.first_halted, self.cache_kw)
            self.compiled_decode = static_cache.CompiledDecode(model, ("drop", self.first_halted, self.cache_kw))

    @property
    def backend(self) -> str:
        return self.attention_config._attn_implementation

    def install_runner(self, cuda_graph) -> None:
        """Ratio > 0: the runner of the halted region; with ``cuda_graph`` not False, the graph path too."""
        first, decoder_layers = self.first_halted, self.decoder_layers
        runner = region.HaltedRunner(self.run_region, getattr(decoder_layers[first], "attention_type", None))
        self.short_layers = nn.ModuleList(list(decoder_layers[:first]) + [runner])
        if self.kinds is not None:  # one captured graph takes one mask and one cos/sin for all its layers
            if cuda_graph:
                raise ValueError("cuda_graph=True is not available for this model: its layers above the activation "
                                 "layer are of several kinds (sliding-window or per-kind rotary embeddings), which "
                                 "the graph path does not serve; use cuda_graph=None or False")
            return
        if cuda_graph is not False:
            self.graphs = graphs.bank_for(decoder_layers, first, self.cache_kw, self.adapter.halted_kv)
            self._graph_devices = {p.device for p in decoder_layers[first:].parameters()}

    def restore_layers(self) -> None:
        if self._swapped:
            self.stack.layers = self.decoder_layers
            self._swapped = False
        if self._scoring is not None:
            self._scoring.remove()
            self._scoring = None
        while self._history_hooks:
            self._history_hooks.pop().remove()
        self._history_sum = None
        self._inputs = {}

    def _new_plan(self, args, kwargs, grid_inputs) -> CallPlan | None:
        return plan_call(self.config, args, kwargs, grid_inputs, self.token_kinds, self.halted_kv)

    # ----------------------------------------------------------------- hooks

    def _enter(self, model_call: bool) -> None:
        """This thread's call begins (the model's pre-hook, or the stack's); RuntimeError while another
        thread's is running. A call of this thread still on the books here is one that raised where no
        post-hook runs (the stack's post-hook is a plain one, see ``on_stack_end``): it is cleared first."""
        me = threading.get_ident()
        with self._owner_lock:
            if self._owner not in (None, me):
                raise RuntimeError("this compressed model is running a call in another thread: dashvl keeps each "
                                   "call's halting state on the model, so one compressed model serves one call at "
                                   "a time. Serialise the calls (a lock around generate), or give each thread its "
                                   "own model")
            if self._owner == me and (model_call or not self._in_model):
                self._clear_call()
            self._owner = me
            self._depth += 1
            self._in_model = self._in_model or model_call

    def _clear_call(self) -> None:
        self.restore_layers()
        self.plan = None
        self._depth, self._in_model = 0, False

    def on_call(self, module, args, kwargs):
        if torch.compiler.is_compiling():  # transformers' compiled decode step: stock, on a static cache
            return checks.check_compiled_call(args, kwargs, self.cache_kw)
        self._enter(model_call=True)
        checks.check_call(self.model, kwargs)
        self.call_backend = backend = self.backend
        checks.check_backend(backend, self.kv_mode)
        plan = self.plan = self._new_plan(args, kwargs, self.adapter.trace_inputs(kwargs))
        if plan is not None and plan.length > 1:  # generate()'s settings only shape prompts; a step is one token
            checks.check_generation(self.model)
            blocks = self.adapter.attention_blocks(kwargs)
            # token types of the whole sequence (a later turn's call carries only the new tokens): its own columns
            plan.blocks = blocks[:, -plan.length:] if blocks is not None else None

    def on_decoder_stack(self, module, args, kwargs):
        """The decoder stack starts: use the call the model planned, or plan one (the stack called directly)."""
        if torch.compiler.is_compiling():
            return checks.check_compiled_call(args, kwargs, self.cache_kw)
        self._enter(model_call=False)
        plan = self.plan
        if plan is None or plan.started:
            self.call_backend = self.backend
            plan = self.plan = self._new_plan(args, kwargs, {})
        if plan is None:
            return
        plan.started = True
        self._note_cache(plan, args, kwargs)
        if plan.length > 1:  # only prompts are scored: decode steps fire no hook on the activation layer
            self._scoring = self.activation_attention.register_forward_hook(self.on_activation_attention,
                                                                            with_kwargs=True, prepend=True)
            self._history_hooks = [a.register_forward_hook(self.on_history_attention)
                                   for a in self._history_attentions]
            self._history_hooks += [layer.register_forward_pre_hook(self.on_layer_input, with_kwargs=True)
                                    for layer in self._input_layers]
        if self.short_layers is not None and (plan.num_halted is not None or plan.layout is not None):
            if plan.frozen_keys is not None:
                device, dtype = plan.real.device, next(self.halted_layers[0].parameters()).dtype
                plan.fast_keep = keep_attention.applies(self.call_backend, device, dtype, plan.length,
                                                        self.kinds is not None and self.kinds.windowed,
                                                        plan.blocks is not None)
            # keep_attention's float32 kernel reads its chunk offsets on the host: not inside a CUDA graph
            width = None if plan.fast_keep and not keep_attention.capturable(device, dtype) \
                else self._graph_width(plan, kwargs)
            if width is not None:
                plan.use_graph(width)
            self.stack.layers = self.short_layers  # restored by on_stack_end / on_model_end
            self._swapped = True

    def on_model_end(self, module, args, output):
        """The model's post-hook, registered always-call: also after an error, this thread's call is over."""
        if torch.compiler.is_compiling():
            return
        with self._owner_lock:
            if self._owner != threading.get_ident():
                return  # another thread's call, refused in its pre-hook: the running call's state stays
            self._clear_call()
            self._owner = None

    def on_stack_end(self, module, args, output):
        """The stack's post-hook. A plain one (not always-call): torch.compile guards on the ids of always-call
        hooks, so each new handle would recompile the static cache's decode step. After an error inside a
        model call the model's post-hook clears the call; after one in a direct stack call, the next call does."""
        if torch.compiler.is_compiling():
            return
        with self._owner_lock:
            if self._owner != threading.get_ident():
                return
            self.restore_layers()
            self.plan = None
            self._depth -= 1
            if self._depth == 0:
                self._owner, self._in_model = None, False

    def _note_cache(self, plan: CallPlan, args, kwargs) -> None:
        """The stack's inputs match the plan; its cache is one dashvl can serve; what the cache holds."""
        shaped = kwargs.get("inputs_embeds")
        if shaped is None:
            shaped = kwargs.get("input_ids", args[0] if args else None)
        B, T = shaped.shape[:2]
        if (plan.batch, plan.length) != (B, T):
            raise RuntimeError(f"the language model received {B}x{T} tokens but the model call had "
                               f"{plan.batch}x{plan.length} ids; dashvl needs prompts whose visual tokens the "
                               "processor already expanded")
        cache = kwargs.get(self.cache_kw, kwargs.get("past_key_values"))
        if cache is not None and static_cache.is_static(cache):
            return self._note_static_cache(plan, cache)
        past = 0
        if cache is not None:  # None: the stack makes a fresh one (the runner meets it)
            if cache not in self._checked_caches:
                checks.check_cache(cache, self.first_halted)
                if len(cache.layers) == len(self.decoder_layers):  # all its layers made: their kinds are fixed
                    self._checked_caches.add(cache)
            past = cache.get_seq_length()
            if past == 0:
                self.layouts.pop(cache, None)
            else:
                plan.layout = self.layouts.get(cache)
                checks.check_cache_origin(cache, plan.layout, self.first_halted, B)
        if self.call_backend.startswith("flash"):  # the kernel slides its window over slots, not positions
            checks.check_window(self.window, past + T)
        plan.cache, plan.past_length = cache, past

    def _note_static_cache(self, plan: CallPlan, cache) -> None:
        """A StaticCache: decode steps are the stock ones (nothing to note: reading its length would sync);
        a prompt must start it, and one that halts runs the halted region on a private DynamicCache, which
        ``static_cache.store`` then writes into the static layers (``run_region``)."""
        static_cache.check_static(cache, self.first_halted, self.call_backend)
        plan.cache = cache
        if plan.length == 1:
            return
        if cache.get_seq_length() > 0:
            raise ValueError("a prompt on a StaticCache that already holds tokens is not supported by dashvl: it "
                             "serves a static cache from empty (one prompt, then decode steps); for a later "
                             "turn on the same cache use the dynamic cache (cache_implementation=None)")
        static_cache.set_holes(cache, None)
        if self.hole_masks is not None:  # on from the first static prompt: a compiled step must have traced them
            self.hole_masks.install()
        if plan.num_halted is not None:
            plan.static, plan.cache = cache, DynamicCache()

    def on_history_attention(self, module, args, output):
        """A layer below l_s, during a prompt (``Method.needs_history``): add its scaled Δ to the sum."""
        plan = self.plan
        if plan is None or plan.length <= 1:
            return
        scaled = policy.scaled_delta(output[0] if isinstance(output, tuple) else output, plan.real)
        self._history_sum = scaled if self._history_sum is None else self._history_sum + scaled

    def on_layer_input(self, module, args, kwargs):
        """Layer l_s or l_s - 1 during a prompt: the residual stream it receives (``needs_layer_input`` /
        ``needs_block_update``)."""
        self._inputs[module] = args[0] if args else kwargs["hidden_states"]

    def on_activation_attention(self, module, args, kwargs, output):
        plan = self.plan
        if plan is None or plan.length <= 1:
            return
        cos, sin = kwargs.get("position_embeddings") or (None, None)
        hidden = (args[0] if args else kwargs["hidden_states"]) if self.method.needs_attention_input else None
        update = output[0] if isinstance(output, tuple) else output
        history = None
        if self.method.needs_history:
            history = policy.scaled_delta(update, plan.real)
            if self._history_sum is not None:
                history = (history + self._history_sum) / (len(self._history_attentions) + 1)
        layer_input = self._inputs.get(self.decoder_layers[self.first_halted - 1])
        below = self._inputs.get(self.decoder_layers[self.first_halted - 2]) if self.first_halted > 1 else None
        block_update = layer_input - below if self.method.needs_block_update and below is not None else None
        plan.select(self.method.score(ScoreContext(module, update, hidden, cos, sin, plan.real,
                                                   self.config.seed, self.adapter, history,
                                                   self.activation_window, plan.eligible,
                                                   layer_input if self.method.needs_layer_input else None,
                                                   block_update, plan.blocks)))
        self.prefills += 1
        active = plan.active if plan.active is not None else plan.real
        self.trace_parts = TraceParts(plan.scores, active, plan.kinds, plan.token_ids, plan.grid_inputs,
                                      self.prefills)

    # ----------------------------------------------------------------- the halted region

    def run_region(self, hidden: torch.Tensor, kwargs: dict) -> torch.Tensor:
        """In place of layers l_s+1..L-1: ``hidden`` [B, T, d] (layer l_s's output) -> [B, T, d].
        ``kwargs``: what the stock loop hands each layer (a dict of this call's own)."""
        plan = self.plan
        if plan.cache is None:  # the stack made the call's cache itself: a fresh one
            plan.cache = kwargs.get(self.cache_kw, kwargs.get("past_key_values"))
        if plan.static is not None:  # the halted layers fill a private cache, stored by position afterwards
            kwargs[self.cache_kw] = plan.cache
            hidden = self._run_graph(plan, hidden, kwargs) if plan.graph else self._run_layers(plan, hidden, kwargs)
            self._store_static(plan)
            return hidden
        if plan.graph:
            return self._run_graph(plan, hidden, kwargs)
        return self._run_layers(plan, hidden, kwargs)

    def _run_layers(self, plan: CallPlan, hidden: torch.Tensor, kwargs: dict) -> torch.Tensor:
        layout = plan.layout
        if plan.length == 1 and layout is not None:  # a decode step: only what changes per step
            layout.append(plan.past_length)
            if self.kinds is not None:
                return self._decode_kinds(plan, hidden, kwargs)
            kwargs["attention_mask"] = region.step_mask(layout, self.call_backend, hidden.dtype)
            kwargs["position_ids"] = None
            with self._step_kernels(hidden):
                for decoder_layer in self.halted_layers:
                    hidden = decoder_layer(hidden, **kwargs)
            return hidden
        if self.kinds is not None and self.kinds.windowed and plan.num_halted is not None and plan.layout is None \
                and plan.cache is not None:
            windows.keep_whole(plan.cache, self.first_halted, plan.past_length)  # sliding layers above l_s
        inputs = self._enter_region(plan, hidden, kwargs)
        if inputs is None:  # nothing halted, now or before: the layers as they are
            for decoder_layer in self.halted_layers:
                hidden = decoder_layer(hidden, **kwargs)
            return hidden
        kwargs.update(inputs.overrides)
        hidden, frozen_keys, by_layer = inputs.hidden, plan.frozen_keys, inputs.by_layer
        switched = keep_attention.switched(self.attention_config) if inputs.fast_keep else contextlib.nullcontext()
        with switched:  # kv="keep" without a mask: the halted layers' attention is keep_attention
            for i, (layer_index, decoder_layer) in enumerate(enumerate(self.halted_layers, self.first_halted)):
                rope = None
                if by_layer is not None:  # layers of several kinds: each with its own mask and cos/sin
                    kwargs.update(by_layer[i])
                    rope = self.kinds.per_layer[i][1]
                if frozen_keys is not None:  # kv="keep": the halted tokens' keys/values first, in its cache layer
                    frozen_keys.write(decoder_layer, layer_index, rope)
                hidden = decoder_layer(hidden, **kwargs)
        return inputs.scatter(hidden) if plan.active is not None else hidden

    def _decode_kinds(self, plan: CallPlan, hidden: torch.Tensor, kwargs: dict) -> torch.Tensor:
        """A decode step through halted layers of several kinds: a mask per window (the window moves with
        the query), cos/sin per rope kind."""
        layout, position = plan.layout, plan.past_length
        masks = {w: region.step_mask(layout, self.call_backend, hidden.dtype, w, position) for w in self.kinds.windows}
        rotaries = self._rotaries(hidden, kwargs)
        kwargs["position_ids"] = None
        with self._step_kernels(hidden):
            for (window, rope), decoder_layer in zip(self.kinds.per_layer, self.halted_layers):
                kwargs["attention_mask"], kwargs["position_embeddings"] = masks[window], rotaries[rope]
                hidden = decoder_layer(hidden, **kwargs)
        return hidden

    def _step_kernels(self, hidden: torch.Tensor):
        """SDPA on CUDA without its cuDNN kernel for the halted layers' decode step. Measured on the H200
        (torch 2.11, bf16, one query against the halted layers' shorter kv="drop" caches): SDPA picks cuDNN
        there and spends about 2.5 ms of host time per layer call, a 7B step 3x slower; its flash and
        memory-efficient kernels compute the same attention at the stock cost. Elsewhere: nothing."""
        if self.call_backend == "sdpa" and hidden.is_cuda and torch.backends.cuda.cudnn_sdp_enabled():
            return sdpa_kernel(_STEP_KERNELS)
        return contextlib.nullcontext()

    def _rotaries(self, hidden: torch.Tensor, kwargs: dict) -> dict:
        """{rope kind: (cos, sin)} of this call for the halted layers; {None: the call's} where all take it.
        The stock loop hands the runner the first halted layer's tables: only the other kinds are computed."""
        given = kwargs.get("position_embeddings")
        if self.kinds is None or all(r is None for r in self.kinds.ropes):
            return {None: given}
        first = self.kinds.per_layer[0][1]
        rotaries = {first: given}
        others = [r for r in self.kinds.ropes if r != first]
        if others:
            rotaries.update(self.adapter.rotary_embeddings(self.model, hidden, kwargs["position_ids"], others))
        return rotaries

    def _store_static(self, plan: CallPlan) -> None:
        layout = self.layouts.pop(plan.cache)
        if self.kv_mode == "keep":
            static_cache.store(plan.cache, plan.static, self.first_halted, layout.key_pos, plan.length)
            return
        # kv="drop": the halted layers keep only the active slots (a shorter cache to read per decode step)
        holes = static_cache.store_compact(plan.cache, plan.static, self.first_halted, layout.key_pos, plan.length,
                                           self.model, self.compiled_decode.key)
        static_cache.set_holes(plan.static, holes)

    def _enter_region(self, plan: CallPlan, hidden, kwargs) -> region.RegionInputs | None:
        plan.region = region.enter(plan, hidden, self._rotaries(hidden, kwargs), self.layouts, self.call_backend,
                                   self.cache_kw, self.kinds)
        return plan.region

    def _run_graph(self, plan: CallPlan, hidden: torch.Tensor, kwargs: dict) -> torch.Tensor:
        """A graph call: enter the region, replay the captured layers, store their keys/values, scatter."""
        inputs = self._enter_region(plan, hidden, kwargs)
        overrides = inputs.overrides
        cos, sin = overrides["position_embeddings"]
        halted = plan.frozen_keys.graph_inputs() if plan.frozen_keys is not None else None
        out, keys_values = self.graphs.run(inputs.hidden, cos, sin, overrides["attention_mask"], halted,
                                           plan.cache is not None, self.call_backend, inputs.fast_keep)
        if plan.cache is not None:
            frozen_width = plan.frozen_keys.width if plan.frozen_keys is not None else 0
            slots = graphs.real_slots(plan.graph_real, plan.width, frozen_width, out.device)
            graphs.store_kv(plan.cache, self.first_halted, keys_values, slots)
            if slots is not None:  # the layout without the filler slots: all valid
                self.layouts[plan.cache] = region.CacheLayout(self.layouts[plan.cache].key_pos[:, slots], True)
        return inputs.scatter(out)

    def _graph_width(self, plan: CallPlan, kwargs) -> int | None:
        """The slots per row when this call's halted layers replay a CUDA graph, else None."""
        if self.graphs is None or plan.num_halted is None:
            return None
        device = plan.real.device
        if device.type != "cuda" and not graphs.EMULATE:
            if self.config.cuda_graph:
                raise ValueError(f"cuda_graph=True needs the model on a CUDA device; this call runs on {device}. "
                                 "Use cuda_graph=None (automatic) or False")
            return None
        bucket = graphs.bucket_width(plan.width)  # nearby lengths share a graph
        if plan.batch * bucket > graphs.MAX_SLOTS:
            return None  # GPU-bound: the layers one by one are as fast, without filler slots
        cache = plan.cache
        fresh = cache is None or (isinstance(cache, DynamicCache) and cache.get_seq_length() == 0)
        if (fresh and not torch.is_grad_enabled() and not torch.is_autocast_enabled(device.type)
                and not self.decoder_layers[self.first_halted].training  # dropout draws random numbers per call
                and self._graph_devices == {device}):
            return min(bucket, plan.length)
        return None
