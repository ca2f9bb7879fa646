"""DashHandle: installs the hooks of ``CallFlow`` on one model, removes them, and shows the last trace."""
from __future__ import annotations

import torch
from torch import nn

from .. import methods, policy
from ..adapters import Adapter
from ..config import DashConfig
from ..trace import HaltTrace
from ..vision import VisionHalting
from . import checks, handles
from .flow import CallFlow
from .record import build_trace

__all__ = ["DashHandle"]


class DashHandle:
    """DASH installed on one model. Made by ``dashvl.compress``; undone by ``remove()`` / ``dashvl.restore``.

    Attributes:
        config: the DashConfig in force. method: its ``dashvl.methods.Method``.
        layer: the resolved activation layer l_s. num_layers: L, the number of decoder layers.
        trace: HaltTrace of the last prefill, or None before any.
    """

    def __init__(self, model: nn.Module, config: DashConfig, adapter: Adapter, decoder_layers: nn.ModuleList,
                 layer: int):
        self.model, self.config, self.adapter, self.layer = model, config, adapter, layer
        self.method = methods.get(config.method)
        self.decoder_layers = decoder_layers
        self.num_layers = len(decoder_layers)
        self._image_id, self._video_id = adapter.image_token_id(model), adapter.video_token_id(model)
        self._flow = CallFlow(self)
        self._trace: HaltTrace | None = None
        self._trace_key = None
        self._hooks: list = []
        self._vision = None
        if config.vision_ratio > 0:
            spec = adapter.vision_spec(model)
            self._vision = VisionHalting(spec, config.vision_ratio, config.resolve_vision_layer(len(spec.blocks)),
                                         self.method, config.seed)

    # ----------------------------------------------------------------- install / remove

    def _install(self) -> None:
        m, flow = self.model, self._flow
        try:
            self._hooks += [
                m.register_forward_pre_hook(flow.on_call, with_kwargs=True),
                m.register_forward_hook(flow.on_model_end, always_call=True),
                flow.stack.register_forward_pre_hook(flow.on_decoder_stack, with_kwargs=True),
                flow.stack.register_forward_hook(flow.on_stack_end),
            ]
            # no hook on any decoder layer (hooks and their Python cost host time on every decode step): the
            # activation layer's attention is hooked per prompt, and the layers above l_s run in a runner
            # swapped in for the call; at ratio 0 nothing halts, so nothing above l_s is touched
            if self.config.ratio > 0:
                flow.install_runner(self.config.cuda_graph)
                if flow.compiled_decode is not None:
                    flow.compiled_decode.install()
            if self._vision is not None:
                self._hooks += self._vision.install()
        except BaseException:
            self.remove()
            raise

    def remove(self) -> None:
        """Remove every hook this handle added; the model is the unmodified one again."""
        while self._hooks:
            self._hooks.pop().remove()
        self._flow.restore_layers()
        if self._flow.hole_masks is not None:
            self._flow.hole_masks.remove()
            self._flow.compiled_decode.remove()
        self._flow.graphs = None
        self._flow.plan = None
        handles.forget(self)

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
        parts = self._flow.trace_parts
        if parts is not None:
            key = (parts.number, self._vision.calls if self._vision is not None else 0)
            if key != self._trace_key:
                self._trace = build_trace(parts, self, self.vision_trace)
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

    @property
    def _graphs(self):
        """The halted layers' ``GraphBank`` while the graph path is installed (tests and benchmarks count on it)."""
        return self._flow.graphs

    @property
    def _short_layers(self):
        return self._flow.short_layers

    def __repr__(self) -> str:
        c = self.config
        return (f"DashHandle(method={c.method!r}, ratio={c.ratio}, layer={self.layer}/{self.num_layers}, "
                f"kv={c.kv!r}, scope={c.scope!r}, active={self.active})")

    def token_kinds(self, input_ids, real) -> torch.Tensor:
        """int8 [B, T] (``policy.KIND_*``) of ``input_ids`` [B, T] (or None: all text); ``real`` False at padding."""
        return policy.token_kinds(input_ids, real, self._image_id, self._video_id)

    # ----------------------------------------------------------------- checks shared with compress()

    def check_backend(self) -> None:
        checks.check_backend(self._flow.backend, self.config.kv)

    def check_generation(self) -> None:
        checks.check_generation(self.model)
