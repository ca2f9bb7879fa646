"""The hooks of one compressed model: each hands its step of a call to the plan, the method, the halted
region or the graph path. Installed and removed by ``DashHandle``; holds the state of the call in flight.

Flow of one model call (a prefill, a second-turn prompt or a decode step):

1. model pre-hook (``on_call``): check the call; plan it (``plan.plan_call``): token kinds, eligibility, and
   the host sync that counts eligible tokens per row, so every later shape is known before the GPU has work
   queued. (The decoder stack's own pre-hook does the same when the stack is called directly.)
2. first decoder layer pre-hook: note the cache, how many tokens it holds, and its ``CacheLayout``.
3. activation-layer attention hook: the method scores the tokens (``Method.score``); the plan selects the
   lowest-scored eligible tokens and builds the gather indices.
4. first halted layer pre-hook: enter the halted region (``region.enter``): gather hidden states and cos/sin
   (and, for kv="keep", the halted tokens' frozen inputs: ``FrozenKeys``); build one mask for all its layers.
   Every halted-region layer pre-hook swaps in those keyword arguments (kv="keep": first writes the halted
   tokens' keys/values into its cache layer).
5. last decoder layer hook: scatter the active tokens back over the frozen states of layer l_s.

On a CUDA device a fresh prefill with few active slots takes the graph path from step 4 on (``graphs``):
the decoder stack's pre-hook swaps its layer list for layers 0..l_s plus a ``HaltedRunner``, which enters
the region as in step 4, replays the halted layers captured as one CUDA graph, stores their keys/values in
the cache and scatters; the stack's post-hook puts the layer list back.
"""
from __future__ import annotations

import inspect
import weakref

import torch
from torch import nn
from transformers.cache_utils import DynamicCache

from ..methods import ScoreContext
from . import checks, graphs, region
from .plan import CallPlan, plan_call
from .record import TraceParts

__all__ = ["CallFlow"]


class CallFlow:
    """The hook callbacks of one DashHandle, and the state they share.

    Attributes:
        plan: the ``CallPlan`` of the call in flight, or None between calls.
        trace_parts: ``TraceParts`` of the last scored prefill, or None.
        graphs: the ``GraphBank`` of the halted layers when the graph path is installed, else None.
        short_layers: layers 0..l_s plus the ``HaltedRunner``, swapped in for a graph call.
    """

    def __init__(self, handle):
        model, decoder_layers = handle.model, handle.decoder_layers
        self.model, self.config, self.method, self.adapter = model, handle.config, handle.method, handle.adapter
        self.decoder_layers = decoder_layers
        self.first_halted = handle.layer + 1
        self.stack = handle.adapter.language_model(model)  # the decoder stack whose .layers the stock loop runs
        self.attention_config = decoder_layers[0].self_attn.config  # holds the backend in force
        params = inspect.signature(decoder_layers[0].forward).parameters
        self.cache_kw = "cache" if "cache" in params else "past_key_values"
        self.window = handle.adapter.sliding_window(model)
        self.kv_mode = handle.config.kv
        self.halted_kv = handle.adapter.halted_kv if self.kv_mode == "keep" else None  # what FrozenKeys calls
        self.token_kinds = handle.token_kinds
        self.layouts: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # cache -> region.CacheLayout
        self.plan: CallPlan | None = None
        self.prefills = 0  # counts scored prefills: the trace is rebuilt when this moves
        self.trace_parts: TraceParts | None = None
        self.graphs = self.short_layers = self._graph_devices = None

    @property
    def backend(self) -> str:
        return self.attention_config._attn_implementation

    def install_graph_path(self) -> None:
        first, decoder_layers = self.first_halted, self.decoder_layers
        self.graphs = graphs.bank_for(decoder_layers, first, self.cache_kw, self.adapter.halted_kv)
        runner = graphs.HaltedRunner(self.run_graph, getattr(decoder_layers[first], "attention_type", None))
        self.short_layers = nn.ModuleList(list(decoder_layers[:first]) + [runner])
        self._graph_devices = {p.device for p in decoder_layers[first:].parameters()}

    def restore_layers(self) -> None:
        if self.stack.layers is not self.decoder_layers:
            self.stack.layers = self.decoder_layers

    def _new_plan(self, args, kwargs, grid_inputs) -> CallPlan | None:
        return plan_call(self.config, args, kwargs, grid_inputs, self.token_kinds, self.halted_kv)

    # ----------------------------------------------------------------- hooks

    def on_call(self, module, args, kwargs):
        checks.check_call(self.model, kwargs)
        checks.check_backend(self.backend, self.kv_mode)
        checks.check_generation(self.model)
        self.plan = self._new_plan(args, kwargs, self.adapter.trace_inputs(kwargs))

    def on_decoder_stack(self, module, args, kwargs):
        """The decoder stack starts: use the call the model planned, or plan one (the stack called directly)."""
        plan = self.plan
        if plan is None or plan.started:
            plan = self.plan = self._new_plan(args, kwargs, {})
        if plan is not None:
            plan.started = True
            width = self._graph_width(plan, kwargs)
            if width is not None:
                plan.use_graph(width)
                self.stack.layers = self.short_layers  # restored by on_call_end

    def on_call_end(self, module, args, output):
        self.restore_layers()
        self.plan = None

    def on_first_layer(self, module, args, kwargs):
        plan = self.plan
        if plan is None:  # the layers were called on their own: no halting plan, nothing halts
            return
        hidden = args[0] if args else kwargs["hidden_states"]
        B, T = hidden.shape[:2]
        if (plan.batch, plan.length) != (B, T):
            raise RuntimeError(f"the language model received {B}x{T} tokens but the model call had "
                               f"{plan.batch}x{plan.length} ids; dashvl needs prompts whose visual tokens the "
                               "processor already expanded")
        cache = kwargs.get(self.cache_kw, kwargs.get("past_key_values"))
        past = 0
        if cache is not None:
            checks.check_cache(cache, self.first_halted)
            past = cache.get_seq_length()
            if past == 0:
                self.layouts.pop(cache, None)
            else:
                plan.layout = self.layouts.get(cache)
                checks.check_cache_origin(cache, plan.layout, self.first_halted, B)
        checks.check_window(self.window, past + T)
        plan.cache, plan.past_length = cache, past

    def on_activation_attention(self, module, args, kwargs, output):
        plan = self.plan
        if plan is None or plan.length <= 1:
            return  # decode steps: generated tokens never halt
        cos, sin = kwargs.get("position_embeddings") or (None, None)
        hidden = (args[0] if args else kwargs["hidden_states"]) if self.method.needs_attention_input else None
        update = output[0] if isinstance(output, tuple) else output
        plan.select(self.method.score(ScoreContext(module, update, hidden, cos, sin, plan.real,
                                                   self.config.seed, self.adapter)))
        self.prefills += 1
        active = plan.active if plan.active is not None else plan.real
        self.trace_parts = TraceParts(plan.scores, active, plan.kinds, plan.token_ids, plan.grid_inputs,
                                      self.prefills)

    def on_halted_layer(self, layer_index: int, module, args, kwargs):
        plan = self.plan
        if plan is None or plan.graph:  # graph calls: the runner prepared the layers' inputs itself
            return None
        if layer_index == self.first_halted:
            args = self._enter_region(plan, args, kwargs)
        if plan.region is None:
            return None
        if plan.frozen_keys is not None:
            plan.frozen_keys.write(module, layer_index)
        kwargs.update(plan.region.overrides)
        return args, kwargs

    def on_last_layer(self, module, args, output):
        plan = self.plan
        if plan is None or plan.active is None or plan.graph:
            return None
        full = plan.region.scatter(output[0] if isinstance(output, tuple) else output)
        return (full,) + tuple(output[1:]) if isinstance(output, tuple) else full

    # ----------------------------------------------------------------- the halted region

    def _enter_region(self, plan: CallPlan, args, kwargs):
        """Prepare the inputs of every layer above l_s for this call; returns the first one's args."""
        hidden = args[0] if args else kwargs["hidden_states"]
        plan.region = region.enter(plan, hidden, kwargs.get("position_embeddings"), self.layouts, self.backend,
                                   self.cache_kw)
        if plan.region is None or plan.region.hidden is hidden:
            return args
        if args:
            return (plan.region.hidden,) + tuple(args[1:])
        kwargs["hidden_states"] = plan.region.hidden
        return args

    def run_graph(self, hidden: torch.Tensor, kwargs: dict) -> torch.Tensor:
        """In place of layers l_s+1..L-1 (a graph call): enter the region, replay the captured layers, scatter.
        ``hidden`` [B, T, d] -> [B, T, d]."""
        plan = self.plan
        (hidden,) = self._enter_region(plan, (hidden,), kwargs)
        overrides = plan.region.overrides
        cos, sin = overrides["position_embeddings"]
        halted = plan.frozen_keys.graph_inputs() if plan.frozen_keys is not None else None
        out, keys_values = self.graphs.run(hidden, cos, sin, overrides["attention_mask"], halted,
                                           plan.cache is not None, self.backend)
        if plan.cache is not None:
            graphs.store_kv(plan.cache, self.first_halted, keys_values)
        return plan.region.scatter(out)

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
        cache = kwargs.get(self.cache_kw, kwargs.get("past_key_values"))
        fresh = cache is None or (isinstance(cache, DynamicCache) and cache.get_seq_length() == 0)
        if (fresh and not torch.is_grad_enabled() and not torch.is_autocast_enabled(device.type)
                and not self.decoder_layers[self.first_halted].training  # dropout draws random numbers per call
                and self._graph_devices == {device}):
            return min(bucket, plan.length)
        return None
