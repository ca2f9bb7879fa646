"""The composed models' training side (``dashvl.composed``): SmolLM2-135M-Instruct as the language model, the
toys' trained vision towers as the starting point of the vision side, a new projector, LoRA on the LM.

``build_composed(name)`` gives a model whose forward is the loaded model's (the LoRA updates applied on the fly,
zero at the start) and its processor (SmolLM2's tokenizer plus the image tokens, a ChatML template with SmolLM2's
own system prompt, so that text questions read as SmolLM2 was trained on). ``trained_parts(model)`` is what
``assets/models/<name>/trained.safetensors`` stores; ``save_composed`` writes the asset folder.
"""
from __future__ import annotations

import json
import os
import shutil
import tarfile
from pathlib import Path

import torch

from dashvl import composed, pretrained

__all__ = ["COMPOSED_NAMES", "build_composed", "trained_parts", "save_composed", "LoRALinear", "TOY_INIT",
           "text_check", "TEXT_QUESTIONS", "text_questions", "text_bank"]

COMPOSED_NAMES = tuple(composed.COMPOSED)
# the bundled toy whose trained vision tower each composed model starts from
TOY_INIT = {"qwen2-vl-smollm2": "qwen2-vl-synth", "llava-smollm2": "llava-synth"}
SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
_IMAGE = {"qwen2_vl": "<|vision_start|><|image_pad|><|vision_end|>", "llava": "<image>\n"}
_VIDEO = {"qwen2_vl": "<|vision_start|><|video_pad|><|vision_end|>", "llava": ""}
_ADDED = {"qwen2_vl": ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"], "llava": ["<image>"]}


def chat_template(family: str) -> str:
    """SmolLM2's ChatML template (its default system prompt) with image / video placeholders in list content."""
    return (
        "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
        "<|im_start|>system\n" + SYSTEM + "<|im_end|>\n{% endif %}"
        "<|im_start|>{{ message['role'] }}\n"
        "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
        "{% else %}{% for content in message['content'] %}"
        "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}" + _IMAGE[family]
        + "{% elif content['type'] == 'video' or 'video' in content %}" + _VIDEO[family]
        + "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}"
        "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


class LoRALinear(torch.nn.Module):
    """``base(x) + (x Aᵀ) Bᵀ · alpha / r``, ``base`` frozen; B starts at zero: the model starts as loaded."""

    def __init__(self, base: torch.nn.Linear, rank: int, alpha: float):
        super().__init__()
        self.base = base.requires_grad_(False)
        self.scale = alpha / rank
        self.lora_A = torch.nn.Parameter(torch.randn(rank, base.in_features) / base.in_features ** 0.5)
        self.lora_B = torch.nn.Parameter(torch.zeros(base.out_features, rank))

    def forward(self, x):
        return self.base(x) + (x @ self.lora_A.t().to(x.dtype)) @ (self.lora_B.t() * self.scale).to(x.dtype)


def _processor(family: str, toy):
    """SmolLM2's tokenizer with the image tokens added, and the toy's image processor."""
    from transformers import LlavaProcessor, Qwen2VLProcessor

    tok = pretrained.load_tokenizer("smollm2-135m-instruct")
    tok.add_special_tokens({"additional_special_tokens": _ADDED[family]})
    tok.padding_side = "left"
    tok.init_kwargs["padding_side"] = "left"  # what save_pretrained writes: batched generation pads on the left
    if family == "qwen2_vl":
        return Qwen2VLProcessor(image_processor=toy.image_processor, video_processor=toy.video_processor,
                                tokenizer=tok, chat_template=chat_template(family))
    return LlavaProcessor(image_processor=toy.image_processor, tokenizer=tok, patch_size=14,
                          vision_feature_select_strategy="default", num_additional_image_tokens=1,
                          chat_template=chat_template(family))


def _config(family: str, lm_config, toy_config, tok):
    """The composed model's config: SmolLM2's text config in the family's text class, the toy's vision config
    (its output width set to SmolLM2's)."""
    from transformers import LlavaConfig, Qwen2VLConfig

    t = lm_config
    ids = {s: tok.convert_tokens_to_ids(s) for s in _ADDED[family]}
    common = dict(vocab_size=len(tok), hidden_size=t.hidden_size, intermediate_size=t.intermediate_size,
                  num_hidden_layers=t.num_hidden_layers, num_attention_heads=t.num_attention_heads,
                  num_key_value_heads=t.num_key_value_heads, max_position_embeddings=t.max_position_embeddings,
                  rms_norm_eps=t.rms_norm_eps, bos_token_id=t.bos_token_id, eos_token_id=t.eos_token_id,
                  pad_token_id=t.pad_token_id, tie_word_embeddings=True)
    theta = t.rope_parameters["rope_theta"]
    if family == "qwen2_vl":
        half = t.hidden_size // t.num_attention_heads // 2  # 32: the sections must sum to head_dim / 2
        mrope = [half - 2 * (3 * half // 8), 3 * half // 8, 3 * half // 8]  # Qwen2-VL's [16, 24, 24], scaled
        text = dict(common, rope_parameters={"rope_type": "default", "rope_theta": theta, "mrope_section": mrope})
        vision = toy_config.vision_config.to_dict()
        vision["hidden_size"] = t.hidden_size
        return Qwen2VLConfig(text_config=text, vision_config=vision, image_token_id=ids["<|image_pad|>"],
                             video_token_id=ids["<|video_pad|>"], vision_start_token_id=ids["<|vision_start|>"],
                             vision_end_token_id=ids["<|vision_end|>"], tie_word_embeddings=True)
    from transformers import LlamaConfig
    text = LlamaConfig(**common, rope_parameters={"rope_type": "default", "rope_theta": theta}, head_dim=t.head_dim)
    v = toy_config.vision_config
    return LlavaConfig(vision_config=v.to_dict(), text_config=text.to_dict(), image_token_index=ids["<image>"],
                       vision_feature_select_strategy="default", vision_feature_layer=-1,
                       image_seq_length=toy_config.image_seq_length, projector_hidden_act="gelu",
                       tie_word_embeddings=True)


def build_composed(name: str, vision_init: str | os.PathLike | None = None, rank: int = 8, alpha: float = 16.0,
                   seed: int = 0, lora: bool = True):
    """``(model, processor)`` to train: SmolLM2's weights (frozen; LoRA on ``LORA_TARGETS`` when ``lora``), the
    toy's vision tower from ``vision_init`` (a safetensors file of its ``model.visual.*`` / ``model.vision_tower.*``
    weights; default: the bundled toy), a new projector (Qwen2-VL: the merger's
    last layer), the added tokens' embeddings set to the mean embedding (frozen: the image tokens' inputs are
    replaced by the vision features, and a mean row is never the greedy pick)."""
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

    spec = composed.COMPOSED[name]
    toy = TOY_INIT[name]
    toy_folder = composed.ASSETS / toy
    lm_folder = pretrained.cached_model(spec.lm)
    lm_config = AutoConfig.from_pretrained(lm_folder)
    processor = _processor(spec.family, AutoProcessor.from_pretrained(toy_folder))
    config = _config(spec.family, lm_config, AutoConfig.from_pretrained(toy_folder), processor.tokenizer)
    torch.manual_seed(seed)
    model = AutoModelForImageTextToText.from_config(config, dtype=torch.float32, attn_implementation="sdpa")
    state = composed.lm_state_for(load_file(str(lm_folder / "model.safetensors")))
    emb = state["model.language_model.embed_tokens.weight"]
    # at the values stored (bfloat16), so that the loaded model is the trained one
    added = emb.mean(0, keepdim=True).bfloat16().float().repeat(len(processor.tokenizer) - emb.shape[0], 1)
    state["model.language_model.embed_tokens.weight"] = torch.cat([emb, added])
    if vision_init is not None:
        init = load_file(str(vision_init))
    else:  # through from_pretrained: the toys' files carry transformers' older key names
        init = AutoModelForImageTextToText.from_pretrained(toy_folder, dtype=torch.float32).state_dict()
    if not any(k.startswith(("model.visual.", "model.vision_tower.")) for k in init):
        raise ValueError(f"{vision_init or toy_folder}: no model.visual.* / model.vision_tower.* weights")
    own = model.state_dict()
    for key, value in init.items():
        vision = key.startswith(("model.visual.", "model.vision_tower."))
        if vision and own[key].shape == value.shape:  # the merger's last layer changes width: new
            state[key] = value.float()
    for key in own:
        if key.endswith(("q_proj.bias", "k_proj.bias", "v_proj.bias")) and "language_model" in key:
            state[key] = torch.zeros(own[key].shape)
    _, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected, unexpected
    loaded = sum(k.startswith(("model.visual.", "model.vision_tower.")) for k in state)
    assert loaded >= 10, f"only {loaded} vision tensors from the toy"
    model.tie_weights()
    model.model.language_model.requires_grad_(False)
    model.lm_head.requires_grad_(False)
    if lora:
        for layer in model.model.language_model.layers:
            for parent in (layer.self_attn, layer.mlp):
                for target in composed.LORA_TARGETS:
                    if hasattr(parent, target):
                        setattr(parent, target, LoRALinear(getattr(parent, target), rank, alpha))
    model.lm_vocab_size = lm_config.vocab_size  # the rows past it are the added tokens' (trained_parts)
    return model, processor


def trained_parts(model) -> dict:
    """What the asset stores (bfloat16): the vision side, the added tokens' embedding rows, and each LoRA update
    as ``<weight key>.lora_A`` / ``.lora_B`` (B scaled by alpha / rank, as ``composed.merge_lora`` adds it)."""
    out = {}
    for key, value in model.state_dict().items():
        if key.startswith(("model.visual.", "model.vision_tower.", "model.multi_modal_projector.")):
            out[key] = value
    for path, module in model.named_modules():
        if isinstance(module, LoRALinear):
            out[f"{path}.lora_A"] = module.lora_A.detach()
            out[f"{path}.lora_B"] = module.lora_B.detach() * module.scale
    emb = model.model.language_model.embed_tokens.weight
    out["added_embeddings"] = emb[model.lm_vocab_size:].detach()
    return {k: v.to(torch.bfloat16).contiguous().cpu() for k, v in out.items()}


def save_composed(name: str, run: dict, result: dict | None, args, log=print) -> Path:
    """``OUT/<name>/``: config, processor, trained.safetensors, eval_test.json; with ``args.pack`` also
    ``OUT/<name>.tar`` (the folder in one file, for the device's file limits)."""
    from safetensors.torch import save_file

    folder = Path(args.out) / name
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    model = run["model"]
    model.config.save_pretrained(folder)
    run["processor"].save_pretrained(folder)
    save_file(trained_parts(model), str(folder / "trained.safetensors"))
    info = {k: run.get(k) for k in ("steps", "train_s", "n_params", "device", "text_check")}
    if run.get("device") == "cuda":
        info["device_name"] = torch.cuda.get_device_name()
    (folder / "training.json").write_text(json.dumps(dict(info, argv=list(__import__("sys").argv), result=result),
                                                     indent=1))
    if result is not None:
        (folder / "eval_test.json").write_text(json.dumps(result, indent=1))
    size = (folder / "trained.safetensors").stat().st_size
    log(f"saved {folder}: trained parts {size / 2**20:.2f} MiB")
    if args.pack:
        with tarfile.open(Path(args.out) / f"{name}.tar", "w") as tar:
            tar.add(folder, arcname=name)
    return folder


# plain text questions the composed model should still answer as SmolLM2 does (no image)
TEXT_QUESTIONS = ("What is the capital of France?", "What is 2 + 3?", "Name a fruit that is yellow.")


@torch.no_grad()
def text_check(model, processor, device: str, log=print, max_new_tokens: int = 24) -> list[dict]:
    """Greedy answers to ``TEXT_QUESTIONS`` through the chat template, no image."""
    was_training = model.training
    model.eval()
    out = []
    for q in TEXT_QUESTIONS:
        prompt = processor.apply_chat_template([{"role": "user", "content": [{"type": "text", "text": q}]}],
                                               add_generation_prompt=True)
        enc = processor.tokenizer([prompt], return_tensors="pt").to(device)
        with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=device == "cuda"):
            ids = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False)
        answer = processor.tokenizer.decode(ids[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
        log(f"text check: {q!r} -> {answer!r}")
        out.append({"question": q, "answer": answer})
    model.train(was_training)
    return out


_COUNTRIES = ("France", "Germany", "Italy", "Spain", "Japan", "China", "India", "Brazil", "Canada", "Egypt", "Kenya",
              "Mexico", "Peru", "Norway", "Sweden", "Poland", "Greece", "Turkey", "Australia", "Argentina")
_TOPICS = ("the sea", "winter", "a library", "bicycles", "the moon", "bread", "music", "trains", "a forest", "rain",
           "friendship", "the desert", "coffee", "mountains", "a city at night")
_HABITS = ("sleeping well", "learning a language", "cooking rice", "saving money", "running")
_THINGS = ("a computer", "photosynthesis", "gravity", "a volcano", "an atom", "democracy", "a rainbow", "an engine",
           "the internet", "a vaccine")


def text_questions(n: int = 240, seed: int = 0) -> list[str]:
    """Plain text questions of several kinds (facts, arithmetic, explanations, short writing, advice), seeded:
    the prompts whose answers by the pretrained LM itself the composed models keep while training."""
    import random
    rng = random.Random(seed)
    kinds = [lambda: f"What is the capital of {rng.choice(_COUNTRIES)}?",
             lambda: f"What is {rng.randint(2, 60)} + {rng.randint(2, 60)}?",
             lambda: f"What is {rng.randint(2, 12)} times {rng.randint(2, 12)}?",
             lambda: f"Explain {rng.choice(_THINGS)} in one sentence.",
             lambda: f"Write a short sentence about {rng.choice(_TOPICS)}.",
             lambda: f"Give me one tip for {rng.choice(_HABITS)}.",
             lambda: f"What colour is {rng.choice(('the sky', 'grass', 'snow', 'a banana', 'a tomato', 'coal'))}?",
             lambda: f"Name a {rng.choice(('fruit', 'vegetable', 'animal', 'planet', 'musical instrument'))} that is "
                     f"{rng.choice(('yellow', 'red', 'green', 'large', 'small'))}."]
    out = []
    while len(out) < n:
        q = rng.choice(kinds)()
        if q not in out and q not in TEXT_QUESTIONS:  # the text check's questions stay held out
            out.append(q)
    return out


@torch.no_grad()
def text_bank(model, processor, device: str, questions, max_new_tokens: int = 64, batch: int = 48) -> list:
    """``[(prompt ids, answer ids)]``: the model's own greedy answers (ending with its end-of-turn token) to
    ``questions`` through the chat template; built before training, when the composed model is the pretrained LM."""
    tok = processor.tokenizer
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    out = []
    model.eval()
    for k in range(0, len(questions), batch):
        prompts = [processor.apply_chat_template([{"role": "user", "content": [{"type": "text", "text": q}]}],
                                                 add_generation_prompt=True) for q in questions[k:k + batch]]
        enc = tok(prompts, return_tensors="pt", padding=True).to(device)
        with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=device == "cuda"):
            ids = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False)
        for row, prompt in zip(ids[:, enc["input_ids"].shape[1]:].tolist(), prompts):
            answer = row[: row.index(eos) + 1] if eos in row else row + [eos]
            out.append((tok(prompt, add_special_tokens=False).input_ids, answer))
    model.train()
    return out
