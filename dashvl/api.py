"""compress / restore: the one verb and its undo."""
from __future__ import annotations

import dataclasses

from torch import nn

from .adapters import adapter_for
from .config import TEXT_DEFAULTS, VISION_DEFAULTS, DashConfig
from .engine import DashHandle, handles

__all__ = ["compress", "restore", "get_handle"]


def compress(model: nn.Module, config: DashConfig | None = None, **settings) -> DashHandle:
    """Install DASH on ``model`` in place and return its handle.

    ``compress(model, ratio=0.5, layer=2)`` or ``compress(model, DashConfig(...))``; keyword settings
    override the config's fields. Without a config, a text-only LM takes the settings the call leaves out from
    ``dashvl.config.TEXT_DEFAULTS`` (dash-snap, layer 0.4·L, ratio 0.25: what the text accuracy table supports),
    a vision-language model from ``dashvl.config.VISION_DEFAULTS`` (FastV's score at layer 2, 2/3 of the visual
    tokens halting: what the vision-language table on real-LLM VLMs supports); ``DashConfig()`` itself is the
    paper's setting. Compressing an already compressed model replaces the old settings
    (``compress`` twice equals ``compress`` once). Every check runs before the model is touched.

    Raises:
        ValueError: a setting out of range, an unsupported model type, attention backend, cache or
            generation setting; the message names what is allowed.
    """
    if config is None:
        defaults = TEXT_DEFAULTS if getattr(adapter_for(model), "text_only", False) else VISION_DEFAULTS
        config = DashConfig(**{**defaults, **settings})
    elif settings:
        config = dataclasses.replace(config, **settings)
    if not isinstance(config, DashConfig):
        raise TypeError(f"config must be a dashvl.DashConfig; got {type(config).__name__}")
    if type(model).__name__ == "OptimizedModule":
        raise ValueError("compress the model before torch.compile, or pass the uncompiled model (model._orig_mod); "
                         "dashvl's hooks do not run under torch.compile")
    adapter = adapter_for(model)
    decoder_layers = adapter.decoder_layers(model)
    layer = config.resolve_layer(len(decoder_layers))
    adapter.check_layer(model, layer)
    handle = DashHandle(model, config, adapter, decoder_layers, layer)
    handle.check_backend()
    handle.check_generation()

    old = handles.installed(model)
    if old is not None:
        old.remove()
    handle._install()
    handles.register(model, handle)
    return handle


def restore(model: nn.Module) -> bool:
    """Remove DASH from ``model``. Returns True if it was compressed."""
    handle = handles.installed(model)
    if handle is None:
        return False
    handle.remove()
    return True


def get_handle(model: nn.Module) -> DashHandle | None:
    """The handle installed on ``model``, if any."""
    return handles.installed(model)
