"""Plain decoder LLMs (text only): LlamaForCausalLM, Qwen2ForCausalLM, MistralForCausalLM."""
from __future__ import annotations

from .base import Adapter


class DecoderAdapter(Adapter):
    model_types = ("llama", "qwen2", "mistral")
    text_only = True  # compress() fills unset settings from dashvl.config.TEXT_DEFAULTS
