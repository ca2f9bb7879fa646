"""Registry of model families, keyed by ``config.model_type``."""
from __future__ import annotations

from torch import nn

from .base import FLASH_ATTENTION, SUPPORTED_ATTENTION, Adapter
from .decoder import DecoderAdapter
from .gemma3 import Gemma3Adapter, Gemma3TextAdapter
from .internvl import InternVLAdapter
from .llava import LlavaAdapter, LlavaNextAdapter, LlavaOnevisionAdapter
from .qwen2_vl import Qwen2VLAdapter
from .qwen3_vl import Qwen3VLAdapter

__all__ = ["Adapter", "adapter_for", "SUPPORTED_MODEL_TYPES", "SUPPORTED_ATTENTION", "FLASH_ATTENTION"]

_ADAPTERS: dict[str, Adapter] = {}
for _adapter in (Qwen2VLAdapter(), Qwen3VLAdapter(), LlavaAdapter(), LlavaNextAdapter(), LlavaOnevisionAdapter(),
                 InternVLAdapter(), DecoderAdapter(), Gemma3TextAdapter(), Gemma3Adapter()):
    for _model_type in _adapter.model_types:
        _ADAPTERS[_model_type] = _adapter

SUPPORTED_MODEL_TYPES = tuple(_ADAPTERS)


def adapter_for(model: nn.Module) -> Adapter:
    """The adapter for ``model``, or ValueError naming the supported model types."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    adapter = _ADAPTERS.get(model_type)
    if adapter is None:
        raise ValueError(f"dashvl does not support model type {model_type!r}; supported: "
                         f"{', '.join(SUPPORTED_MODEL_TYPES)}")
    adapter.check(model)
    return adapter
