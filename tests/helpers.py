"""Tiny models, inputs and the slow reference the tests compare dashvl against."""
from __future__ import annotations

import torch

from dashvl.adapters import adapter_for
from dashvl.tiny import (sample_image, tiny_decoder, tiny_gemma3, tiny_internvl, tiny_llava, tiny_llava_next,
                         tiny_llava_onevision, tiny_qwen2_vl, tiny_qwen3_vl)

BACKBONES = ("qwen2_vl", "llava", "llama", "qwen3_vl", "llava_next", "llava_onevision", "internvl", "gemma3")  # model families (synthvqa.suite.FAMILIES are question families)
NEW_TOKENS = 8


BUILT: dict = {}


def build(family: str, attn: str = "sdpa"):
    """(model, processor_or_tokenizer) with EOS disabled so every row generates exactly NEW_TOKENS. Cached."""
    if (family, attn) not in BUILT:
        BUILT[family, attn] = _build(family, attn)
    return BUILT[family, attn]


def _build(family: str, attn: str):
    if family in ("qwen2_vl", "qwen2_5_vl"):
        model, proc = tiny_qwen2_vl(attn=attn, model_type=family)
    elif family == "qwen3_vl":  # DeepStack after decoder layers 0 and 1: halting from layer 1 up
        model, proc = tiny_qwen3_vl(attn=attn)
    elif family == "llava-deep-vision":  # a 3-layer CLIP, so halting at layer 0 reaches the features (layer -2)
        model, proc = tiny_llava(attn=attn, vision_layers=3)
    elif family == "gemma3":  # Gemma 3 with images: bidirectional image blocks, sliding windows of 8
        model, proc = tiny_gemma3(attn=attn)
    elif family == "internvl":  # tiles plus a thumbnail, 2x2 pixel shuffle, a Qwen2 text model
        model, proc = tiny_internvl(attn=attn)
    elif family == "llava_onevision":  # SigLIP, anyres_max tiles + newlines, a Qwen2 text model; videos too
        model, proc = tiny_llava_onevision(attn=attn)
    elif family.startswith("llava_next"):  # anyres tiles and image-newline tokens (-deep-vision: a 3-layer CLIP)
        model, proc = tiny_llava_next(attn=attn, vision_layers=3 if family.endswith("deep-vision") else 2)
    elif family.startswith("llava"):  # llava, llava-mistral, llava-qwen2
        model, proc = tiny_llava(attn=attn, text_model=family.partition("-")[2] or "llama")
    elif family == "mistral-window":  # every layer slides, window 8: the test prompts run past it
        model, proc = tiny_decoder("mistral", attn=attn)
        model.config.sliding_window = 8
    else:  # llama, qwen2, mistral, gemma3_text (window 8, every third layer global)
        model, proc = tiny_decoder(family, attn=attn)
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = model.config.get_text_config().pad_token_id
    return model, proc


TEXT_FAMILIES = ("llama", "qwen2", "mistral", "mistral-window", "gemma3_text")
WINDOWED = ("mistral-window", "gemma3_text")  # sliding window of 8 tokens: prompts are made longer than it
PROMPTS = ["what colour is the square?", "how many shapes are there in this picture on the left of the tree?",
           "read the sign"]


def make_inputs(family: str, batch: int = 1, images: int = 1):
    """Processor outputs for ``batch`` prompts of different lengths (left padded), each with ``images`` images
    interleaved with text, images of different sizes and aspect ratios."""
    _, proc = build(family)
    texts, pics = [], []
    for b in range(batch):
        words = PROMPTS[b % len(PROMPTS)]
        if family in TEXT_FAMILIES:
            texts.append(words + " " + " ".join(["describe the image"] * (b + 3 * (family in WINDOWED))))
            continue
        content = []
        for i in range(images):
            content += [{"type": "text", "text": f"picture {i}:"}, {"type": "image"}]
            pics.append(sample_image(width=56 + 28 * ((b + i) % 3), height=56 + 28 * ((b + 2 * i) % 2), seed=b * 7 + i))
        content.append({"type": "text", "text": words})
        texts.append(proc.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True))
    if family in TEXT_FAMILIES:
        return dict(proc(texts, return_tensors="pt", padding=True))
    if family == "gemma3":  # its processor takes each row's images as a list
        pics = [pics[b * images:(b + 1) * images] for b in range(batch)]
    return dict(proc(text=texts, images=pics, return_tensors="pt", padding=True))


def layers_of(model):
    return model.model.language_model.layers if hasattr(model.model, "language_model") else model.model.layers


def reference_halted(scores, real, kinds_visual, ratio, scope="all", protect_last=1, start=0):
    """The DASH rule written plainly: per row, the floor(ratio * n) eligible tokens with the smallest score,
    ties to the earlier position. Only positions >= ``start`` (the new prompt tokens) are candidates."""
    B, T = scores.shape
    halted = torch.zeros(B, T, dtype=torch.bool)
    for b in range(B):
        real_pos = [t for t in range(start, T) if real[b, t]]
        protected = set(real_pos[-protect_last:])
        cand = [t for t in real_pos if t not in protected and
                (scope == "all" or (scope == "vision") == bool(kinds_visual[b, t]))]
        k = int(ratio * len(cand) + 1e-9)
        for t in sorted(cand, key=lambda t: (float(scores[b, t]), t))[:k]:
            halted[b, t] = True
    return halted


def _image_blocks(token_type_ids):
    """Per token the index of its image among the row's images (a run of image tokens), -1 for text."""
    out = torch.full(token_type_ids.shape, -1)
    for b in range(token_type_ids.shape[0]):
        block, prev = -1, 0
        for t, v in enumerate(token_type_ids[b].tolist()):
            if v == 1 and prev != 1:
                block += 1
            if v == 1:
                out[b, t] = block
            prev = v
    return out


class Reference:
    """Full-length DASH without gathering or cache: layers above ``layer`` see halted tokens masked as queries
    (their output is reset to the frozen state of layer ``layer``) and, for kv="drop", masked as keys."""

    def __init__(self, model, layer: int, kv: str):
        self.model, self.layer, self.kv = model, layer, kv
        self.layers = layers_of(model)

    @torch.no_grad()
    def scores(self, inputs) -> torch.Tensor:
        """Δ at the activation layer from an unmodified full forward: float32 [B, T]."""
        out = {}

        def keep(module, args, output):
            out["u"] = output[0].float().norm(dim=-1)

        hook = self.layers[self.layer].self_attn.register_forward_hook(keep)
        try:
            self.model(**inputs, use_cache=False)
        finally:
            hook.remove()
        return out["u"]

    @torch.no_grad()
    def logits(self, inputs, halted: torch.Tensor) -> torch.Tensor:
        """Logits [B, S, V] of the full-length forward with ``halted`` (bool [B, S]) frozen from layer+1 on."""
        real = inputs["attention_mask"].bool()
        B, S = real.shape
        key_ok = real & (~halted if self.kv == "drop" else torch.ones_like(halted))
        causal = torch.ones(S, S, dtype=torch.bool).tril()
        seen = causal[None]
        if "token_type_ids" in inputs:  # Gemma 3: an image's tokens see each other both ways
            blocks = _image_blocks(inputs["token_type_ids"])
            seen = seen | ((blocks[:, :, None] == blocks[:, None, :]) & (blocks[:, :, None] >= 0))
        allowed = key_ok[:, None, :] & seen
        allowed |= torch.eye(S, dtype=torch.bool)[None]  # halted rows: self only, never an empty row
        # sliding-window layers: a query sees keys less than `window` positions back (transformers' overlay)
        pos = torch.arange(S)
        windows = adapter_for(self.model).layer_windows(self.model)
        masks = {}
        for w in set(windows[self.layer + 1:]):
            ok = allowed if w is None else allowed & ((pos[:, None] - pos[None, :]) < w)[None] | \
                torch.eye(S, dtype=torch.bool)[None]
            masks[w] = torch.zeros(B, 1, S, S).masked_fill(~ok[:, None], torch.finfo(torch.float32).min)
        frozen = {}

        def freeze(module, args, kwargs):  # what layer+1 receives: layer's output, plus what the stack adds
            frozen["h"] = args[0] if args else kwargs["hidden_states"]  # between them (Qwen3-VL's DeepStack)

        hooks = [self.layers[self.layer + 1].register_forward_pre_hook(freeze, with_kwargs=True)]
        for layer, w in zip(self.layers[self.layer + 1:], windows[self.layer + 1:]):
            hooks.append(layer.register_forward_pre_hook(
                lambda m, a, k, mask=masks[w]: (a, {**k, "attention_mask": mask}), with_kwargs=True))
            hooks.append(layer.register_forward_hook(
                lambda m, a, o: torch.where(halted[..., None], frozen["h"], o)))
        try:
            return self.model(**inputs, use_cache=False).logits
        finally:
            for h in hooks:
                h.remove()

    def greedy(self, inputs, halted_prompt: torch.Tensor, steps: int = NEW_TOKENS):
        """Greedy decoding by full re-runs; generated tokens never halt. Returns (tokens [B, steps], logits list)."""
        inputs = dict(inputs)
        tokens, logits = [], []
        for _ in range(steps):
            S = inputs["input_ids"].shape[1]
            halted = torch.zeros(inputs["input_ids"].shape, dtype=torch.bool)
            halted[:, :halted_prompt.shape[1]] = halted_prompt
            last = self.logits(inputs, halted)[:, -1]
            nxt = last.argmax(-1)
            tokens.append(nxt)
            logits.append(last)
            inputs = extend(inputs, nxt)
        return torch.stack(tokens, 1), logits


def dash_reference(model, inputs, layer: int, kv: str, ratio: float, steps: int = NEW_TOKENS, scope: str = "all",
                   protect_last: int = 1):
    """The slow reference of the paper's DASH on ``inputs``: (halted bool [B, T], greedy tokens [B, steps],
    per-step logits)."""
    ref = Reference(model, layer, kv)
    halted = reference_halted(ref.scores(inputs), inputs["attention_mask"].bool(),
                              visual_kinds(model, inputs["input_ids"]), ratio, scope, protect_last)
    return (halted, *ref.greedy(inputs, halted, steps))


def extend(inputs: dict, nxt: torch.Tensor) -> dict:
    """Append one token per row to processor outputs (ids, mask and, for Qwen2-VL, token types)."""
    out = dict(inputs)
    out["input_ids"] = torch.cat([inputs["input_ids"], nxt[:, None]], 1)
    out["attention_mask"] = torch.cat([inputs["attention_mask"], torch.ones_like(nxt)[:, None]], 1)
    for key in ("mm_token_type_ids", "token_type_ids"):
        if key in inputs:
            out[key] = torch.cat([inputs[key], torch.zeros_like(nxt)[:, None]], 1)
    return out


def visual_kinds(model, input_ids):
    cfg = model.config
    ids = [getattr(cfg, "image_token_id", None), getattr(cfg, "video_token_id", None)]
    return sum((input_ids == i) for i in ids if i is not None).bool() if any(i is not None for i in ids) \
        else torch.zeros_like(input_ids, dtype=torch.bool)


def assert_same_generation(out, inputs, tokens, logits, atol: float = 2e-4):
    """generate()'s new tokens equal the reference's greedy ``tokens``; its per-step logits are within ``atol``."""
    assert torch.equal(out.sequences[:, inputs["input_ids"].shape[1]:], tokens)
    assert len(out.logits) == len(logits)
    for step, (got, want) in enumerate(zip(out.logits, logits)):
        torch.testing.assert_close(got, want, atol=atol, rtol=0, msg=lambda m, step=step: f"step {step}: {m}")


@torch.no_grad()
def generate(model, inputs, **kw):
    return model.generate(**inputs, max_new_tokens=NEW_TOKENS, do_sample=False, output_logits=True,
                          return_dict_in_generate=True, **kw)


# ----------------------------------------------------------------- independent scores of the text methods

def record_updates(model, inputs):
    """Every layer's attention update U of one unmodified forward."""
    got = []
    hooks = [layer.self_attn.register_forward_hook(lambda m, a, o: got.append(o[0])) for layer in layers_of(model)]
    try:
        with torch.no_grad():
            model(**inputs, use_cache=False)
    finally:
        for h in hooks:
            h.remove()
    return got


def rank_fractions(scores, real):
    """Per row, each real token's rank among the real tokens / (n - 1), ties by position; written with loops."""
    out = torch.zeros_like(scores, dtype=torch.float32)
    for b in range(scores.shape[0]):
        idx = real[b].nonzero().flatten().tolist()
        order = sorted(idx, key=lambda i: (float(scores[b, i]), i))
        for rank, i in enumerate(order):
            out[b, i] = rank / max(len(idx) - 1, 1)
    return out


def dash_avg_reference(updates, real, layer, sinks=4):
    """Δ of layers 0..layer, each divided by its median over the row's real tokens, averaged; sinks kept."""
    rows = []
    for b in range(real.shape[0]):
        per_layer = []
        for U in updates[:layer + 1]:
            delta = U[b].float().norm(dim=-1)
            per_layer.append(delta / delta[real[b]].median())
        score = torch.stack(per_layer).mean(0)
        first = real[b].nonzero().flatten()[:sinks]
        score[first] = torch.finfo(torch.float32).max
        rows.append(score)
    return torch.stack(rows)
