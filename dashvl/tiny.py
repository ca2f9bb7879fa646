"""Tiny random models with the real transformers classes and processors, built offline.

Used by the tests, the demo and the CPU benchmark: no weights or tokenizers can be downloaded here, so
a byte-level BPE is trained on the spot and models are made from config. The weights are random (with a
large init std so that greedy decoding does not collapse to one token); they say nothing about accuracy.
"""
from __future__ import annotations

import copy
import functools

import torch

__all__ = ["tiny_qwen2_vl", "tiny_qwen3_vl", "tiny_llava", "tiny_llava_next", "tiny_llava_onevision", "tiny_internvl",
           "tiny_gemma3", "tiny_decoder", "train_tokenizer", "sample_image"]

QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                 "<|image_pad|>", "<|video_pad|>"]
LLAVA_SPECIALS = ["<unk>", "<s>", "</s>", "<pad>", "<image>"]

QWEN_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% else %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
LLAVA_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'user' %}USER: {% else %}ASSISTANT: {% endif %}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for part in message['content'] %}{% if part['type'] == 'image' %}<image>\n"
    "{% else %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}"
    "{% if message['role'] != 'user' %}</s>{% endif %} {% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)

_WORDS = ("what colour is the square circle triangle star red green blue yellow left right top bottom how many "
          "shapes are there in this image picture is a on of one two three four five six yes no answer word "
          "describe read text the sign says cat dog tree house sky sun small large near far below above").split()


def _corpus(n: int = 400) -> list[str]:
    g = torch.Generator().manual_seed(0)
    lines = []
    for _ in range(n):
        k = int(torch.randint(3, 12, (1,), generator=g))
        idx = torch.randint(0, len(_WORDS), (k,), generator=g).tolist()
        lines.append(" ".join(_WORDS[i] for i in idx) + "?")
    return lines


def byte_level_bpe(lines, specials, vocab_size: int):
    """A byte-level BPE (``tokenizers.Tokenizer``) trained on ``lines``, with ``specials`` first in its vocabulary."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(lines, trainer)
    return tok


@functools.lru_cache(maxsize=None)
def train_tokenizer(family: str, vocab_size: int = 400):
    """A ``PreTrainedTokenizerFast`` trained locally, with the special tokens ``family``'s processor expects."""
    from transformers import PreTrainedTokenizerFast

    tok = byte_level_bpe(_corpus(), QWEN_SPECIALS if family == "qwen2_vl" else LLAVA_SPECIALS, vocab_size)
    if family == "qwen2_vl":
        return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                       padding_side="left", chat_template=QWEN_CHAT_TEMPLATE)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="<pad>", padding_side="left", chat_template=LLAVA_CHAT_TEMPLATE)





def tiny_qwen2_vl(attn: str = "sdpa", num_layers: int = 4, hidden: int = 64, seed: int = 0,
                  init_std: float = 0.2, model_type: str = "qwen2_vl", max_pixels: int = 112 * 112):
    """A tiny Qwen2-VL (or Qwen2.5-VL with ``model_type="qwen2_5_vl"``) and its real processor."""
    from transformers import (Qwen2VLImageProcessor, Qwen2VLProcessor, Qwen2VLVideoProcessor)

    tok = train_tokenizer("qwen2_vl")
    ids = {t: tok.convert_tokens_to_ids(t) for t in QWEN_SPECIALS}
    heads, head_dim = 4, hidden // 4
    half = head_dim // 2
    mrope = [half - 2 * (half // 3), half // 3, half // 3]  # must sum to head_dim / 2
    text = dict(vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=num_layers,
                num_attention_heads=heads, num_key_value_heads=2, max_position_embeddings=4096,
                initializer_range=init_std, rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                                             "mrope_section": mrope},
                bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"])
    if model_type == "qwen2_vl":
        from transformers import Qwen2VLConfig as Config, Qwen2VLForConditionalGeneration as Model
        vision = dict(depth=2, embed_dim=32, hidden_size=hidden, num_heads=2, mlp_ratio=2, patch_size=14,
                      spatial_merge_size=2, temporal_patch_size=2, initializer_range=init_std)
    elif model_type == "qwen2_5_vl":
        from transformers import Qwen2_5_VLConfig as Config, Qwen2_5_VLForConditionalGeneration as Model
        vision = dict(depth=2, hidden_size=32, out_hidden_size=hidden, intermediate_size=64, num_heads=2,
                      patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=56,
                      fullatt_block_indexes=[1], initializer_range=init_std)
    else:
        raise ValueError(f"model_type must be 'qwen2_vl' or 'qwen2_5_vl'; got {model_type!r}")
    config = Config(text_config=text, vision_config=vision, image_token_id=ids["<|image_pad|>"],
                    video_token_id=ids["<|video_pad|>"], vision_start_token_id=ids["<|vision_start|>"],
                    vision_end_token_id=ids["<|vision_end|>"], initializer_range=init_std, tie_word_embeddings=False)
    config._attn_implementation = attn
    torch.manual_seed(seed)
    model = Model(config).eval()
    size = {"shortest_edge": 28 * 28 * 4, "longest_edge": max_pixels}
    processor = Qwen2VLProcessor(image_processor=Qwen2VLImageProcessor(size=size),
                                 video_processor=Qwen2VLVideoProcessor(size=size), tokenizer=tok,
                                 chat_template=QWEN_CHAT_TEMPLATE)
    return model, processor


def tiny_qwen3_vl(attn: str = "sdpa", num_layers: int = 4, hidden: int = 64, seed: int = 0, init_std: float = 0.2,
                  max_pixels: int = 128 * 128):
    """A tiny Qwen3-VL (16-px patches, interleaved M-RoPE, DeepStack: the vision tower's blocks 0 and 1 add
    their features to the hidden states after decoder layers 0 and 1) and its real processor."""
    from transformers import (Qwen2VLImageProcessor, Qwen3VLConfig, Qwen3VLForConditionalGeneration,
                              Qwen3VLProcessor, Qwen3VLVideoProcessor)

    tok = train_tokenizer("qwen2_vl")
    ids = {t: tok.convert_tokens_to_ids(t) for t in QWEN_SPECIALS}
    heads, head_dim = 4, hidden // 4
    half = head_dim // 2
    mrope = [half - 2 * (half // 3), half // 3, half // 3]
    text = dict(vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=num_layers,
                num_attention_heads=heads, num_key_value_heads=2, head_dim=head_dim, max_position_embeddings=4096,
                initializer_range=init_std, rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                                             "mrope_section": mrope, "mrope_interleaved": True},
                bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"])
    vision = dict(depth=2, hidden_size=32, out_hidden_size=hidden, intermediate_size=64, num_heads=2, patch_size=16,
                  spatial_merge_size=2, temporal_patch_size=2, num_position_embeddings=64,
                  deepstack_visual_indexes=[0, 1], initializer_range=init_std)
    config = Qwen3VLConfig(text_config=text, vision_config=vision, image_token_id=ids["<|image_pad|>"],
                           video_token_id=ids["<|video_pad|>"], vision_start_token_id=ids["<|vision_start|>"],
                           vision_end_token_id=ids["<|vision_end|>"], tie_word_embeddings=False)
    config._attn_implementation = attn
    torch.manual_seed(seed)
    model = Qwen3VLForConditionalGeneration(config).eval()
    size = {"shortest_edge": 32 * 32 * 4, "longest_edge": max_pixels}
    processor = Qwen3VLProcessor(image_processor=Qwen2VLImageProcessor(size=size, patch_size=16, merge_size=2),
                                 video_processor=Qwen3VLVideoProcessor(size=size, patch_size=16, merge_size=2),
                                 tokenizer=tok, chat_template=QWEN_CHAT_TEMPLATE)
    return model, processor


def tiny_llava(attn: str = "sdpa", num_layers: int = 4, hidden: int = 64, seed: int = 0, init_std: float = 0.2,
               text_model: str = "llama", image_size: int = 56, vision_layers: int = 2):
    """A tiny LLaVA-1.5 (CLIP tower, 2-layer projector, Llama / Mistral / Qwen2 text model) and its processor."""
    from transformers import (CLIPImageProcessor, CLIPVisionConfig, LlavaConfig, LlavaForConditionalGeneration,
                              LlavaProcessor)
    from transformers.models.auto import CONFIG_MAPPING

    tok = train_tokenizer("llava")
    image_id = tok.convert_tokens_to_ids("<image>")
    text = CONFIG_MAPPING[text_model](
        vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=num_layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096, initializer_range=init_std,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        **({"sliding_window": None} if text_model == "mistral" else {}))
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=vision_layers, num_attention_heads=2,
                              image_size=image_size, patch_size=14, initializer_range=init_std)
    side = image_size // 14
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_index=image_id,
                         vision_feature_select_strategy="default", vision_feature_layer=-2,
                         image_seq_length=side * side, initializer_range=init_std, tie_word_embeddings=False)
    config._attn_implementation = attn
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config).eval()
    image_processor = CLIPImageProcessor(size={"shortest_edge": image_size},
                                         crop_size={"height": image_size, "width": image_size})
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tok, patch_size=14,
                               vision_feature_select_strategy="default", num_additional_image_tokens=1,
                               chat_template=LLAVA_CHAT_TEMPLATE)
    return model, processor


def tiny_llava_next(attn: str = "sdpa", num_layers: int = 4, hidden: int = 64, seed: int = 0, init_std: float = 0.2,
                    image_size: int = 56, vision_layers: int = 2):
    """A tiny LLaVA-NeXT (CLIP tower, anyres tiling over 1x2, 2x1 and 2x2 tiles, image-newline embedding, Llama
    text model) and its processor: an image is a base tile of (image_size / 14)^2 tokens plus its stitched,
    unpadded tile grid with one newline token per row."""
    from transformers import (CLIPVisionConfig, LlavaNextConfig, LlavaNextForConditionalGeneration,
                              LlavaNextImageProcessor, LlavaNextProcessor)
    from transformers.models.auto import CONFIG_MAPPING

    tok = train_tokenizer("llava")
    image_id = tok.convert_tokens_to_ids("<image>")
    text = CONFIG_MAPPING["llama"](
        vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=num_layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096, initializer_range=init_std,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=vision_layers,
                              num_attention_heads=2, image_size=image_size, patch_size=14, initializer_range=init_std)
    pinpoints = [[image_size, 2 * image_size], [2 * image_size, image_size], [2 * image_size, 2 * image_size]]
    config = LlavaNextConfig(vision_config=vision, text_config=text, image_token_index=image_id,
                             vision_feature_select_strategy="default", vision_feature_layer=-2,
                             image_grid_pinpoints=pinpoints, initializer_range=init_std, tie_word_embeddings=False)
    config._attn_implementation = attn
    torch.manual_seed(seed)
    model = LlavaNextForConditionalGeneration(config).eval()
    image_processor = LlavaNextImageProcessor(size={"shortest_edge": image_size},
                                              crop_size={"height": image_size, "width": image_size},
                                              image_grid_pinpoints=pinpoints)
    processor = LlavaNextProcessor(image_processor=image_processor, tokenizer=tok, patch_size=14,
                                   vision_feature_select_strategy="default", num_additional_image_tokens=1,
                                   chat_template=LLAVA_CHAT_TEMPLATE)
    return model, processor


def tiny_llava_onevision(attn: str = "sdpa", num_layers: int = 4, hidden: int = 64, seed: int = 0,
                         init_std: float = 0.2, image_size: int = 56, vision_layers: int = 2):
    """A tiny LLaVA-OneVision (SigLIP tower, anyres tiling over 1x2, 2x1 and 2x2 tiles with "anyres_max_9"
    downsampling, image-newline embedding, Qwen2 text model) and its processor, which takes images and videos: an
    image is a base tile plus its stitched, unpadded grid with a newline per row; a video its frames' 2x2-pooled
    grids and one newline."""
    from transformers import (LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration,
                              LlavaOnevisionImageProcessor, LlavaOnevisionProcessor, LlavaOnevisionVideoProcessor,
                              SiglipVisionConfig)
    from transformers.models.auto import CONFIG_MAPPING

    tok = copy.deepcopy(train_tokenizer("llava"))  # the cached one is shared: adding to it would change others
    tok.add_special_tokens({"additional_special_tokens": ["<video>"]})
    text = CONFIG_MAPPING["qwen2"](
        vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=num_layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096, initializer_range=init_std,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        tie_word_embeddings=False)
    vision = SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=vision_layers,
                                num_attention_heads=2, image_size=image_size, patch_size=14)
    pinpoints = [[image_size, 2 * image_size], [2 * image_size, image_size], [2 * image_size, 2 * image_size]]
    config = LlavaOnevisionConfig(vision_config=vision, text_config=text,
                                  image_token_index=tok.convert_tokens_to_ids("<image>"),
                                  video_token_index=tok.convert_tokens_to_ids("<video>"),
                                  vision_feature_select_strategy="full", vision_feature_layer=-1,
                                  image_grid_pinpoints=pinpoints, vision_aspect_ratio="anyres_max_9",
                                  initializer_range=init_std, tie_word_embeddings=False)
    config._attn_implementation = attn
    torch.manual_seed(seed)
    model = LlavaOnevisionForConditionalGeneration(config).eval()
    size = {"height": image_size, "width": image_size}
    processor = LlavaOnevisionProcessor(
        image_processor=LlavaOnevisionImageProcessor(size=size, image_grid_pinpoints=pinpoints), tokenizer=tok,
        video_processor=LlavaOnevisionVideoProcessor(size=size), num_image_tokens=(image_size // 14) ** 2,
        vision_feature_select_strategy="full", chat_template=LLAVA_CHAT_TEMPLATE)
    return model, processor


def tiny_internvl(attn: str = "sdpa", num_layers: int = 4, hidden: int = 64, seed: int = 0, init_std: float = 0.2,
                  image_size: int = 56, vision_layers: int = 2):
    """A tiny InternVL (InternViT tower, 2x2 pixel shuffle: (image_size / 28)^2 tokens per tile, pictures cut into up
    to 4 tiles plus a thumbnail, Qwen2 text model) and its processor."""
    from transformers import (GotOcr2ImageProcessor, InternVLConfig, InternVLForConditionalGeneration,
                              InternVLProcessor, InternVLVideoProcessor, PreTrainedTokenizerFast)
    from transformers.models.auto import CONFIG_MAPPING

    specials = ["<unk>", "<s>", "</s>", "<pad>", "<img>", "</img>", "<IMG_CONTEXT>", "<video>"]
    tok = PreTrainedTokenizerFast(
        tokenizer_object=byte_level_bpe(_corpus(), specials, 640), bos_token="<s>", eos_token="</s>",
        unk_token="<unk>", pad_token="<pad>", padding_side="left",
        extra_special_tokens={"start_image_token": "<img>", "end_image_token": "</img>",
                              "context_image_token": "<IMG_CONTEXT>", "video_token": "<video>"})
    text = CONFIG_MAPPING["qwen2"](
        vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=num_layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096, initializer_range=init_std,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        tie_word_embeddings=False)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=vision_layers, num_attention_heads=2,
                  image_size=[image_size, image_size], patch_size=[14, 14], initializer_range=init_std)
    per_tile = (image_size // 28) ** 2
    config = InternVLConfig(vision_config=vision, text_config=text, image_token_id=tok.context_image_token_id,
                            image_seq_length=per_tile, downsample_ratio=0.5, tie_word_embeddings=False)
    config._attn_implementation = attn
    torch.manual_seed(seed)
    model = InternVLForConditionalGeneration(config).eval()
    size = {"height": image_size, "width": image_size}
    processor = InternVLProcessor(
        image_processor=GotOcr2ImageProcessor(size=size, crop_to_patches=True, min_patches=1, max_patches=4),
        tokenizer=tok, video_processor=InternVLVideoProcessor(size=size), image_seq_length=per_tile,
        chat_template=LLAVA_CHAT_TEMPLATE.replace("<image>", "<IMG_CONTEXT>"))
    return model, processor


def tiny_gemma3(attn: str = "sdpa", num_layers: int = 4, hidden: int = 64, seed: int = 0, init_std: float = 0.2,
                image_size: int = 56, vision_layers: int = 2):
    """A tiny Gemma 3 VLM (SigLIP tower, patches average-pooled to 4 tokens per image, Gemma 3 text model with
    sliding-window layers of window 8 and a global one, its images attending bidirectionally) and its processor."""
    from transformers import (Gemma3Config, Gemma3ForConditionalGeneration, Gemma3ImageProcessor, Gemma3Processor,
                              PreTrainedTokenizerFast, SiglipVisionConfig)
    from transformers.models.auto import CONFIG_MAPPING

    specials = ["<unk>", "<bos>", "<eos>", "<pad>", "<start_of_image>", "<end_of_image>", "<image_soft_token>"]
    tok = PreTrainedTokenizerFast(
        tokenizer_object=byte_level_bpe(_corpus(), specials, 640), bos_token="<bos>", eos_token="<eos>",
        unk_token="<unk>", pad_token="<pad>", padding_side="left",
        extra_special_tokens={"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>",
                              "image_token": "<image_soft_token>"})
    text = CONFIG_MAPPING["gemma3_text"](
        vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=num_layers,
        num_attention_heads=4, num_key_value_heads=2, head_dim=hidden // 4, query_pre_attn_scalar=hidden // 4,
        sliding_window=8, layer_types=["full_attention" if (i + 1) % 3 == 0 else "sliding_attention"
                                       for i in range(num_layers)],
        max_position_embeddings=4096, initializer_range=init_std, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, tie_word_embeddings=False)
    vision = SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=vision_layers,
                                num_attention_heads=2, image_size=image_size, patch_size=14)
    config = Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=4,
                          boi_token_index=tok.boi_token_id, eoi_token_index=tok.convert_tokens_to_ids("<end_of_image>"),
                          image_token_index=tok.convert_tokens_to_ids("<image_soft_token>"), initializer_range=init_std,
                          tie_word_embeddings=False)
    config._attn_implementation = attn
    torch.manual_seed(seed)
    model = Gemma3ForConditionalGeneration(config).eval()
    with torch.no_grad():  # the projector's weight starts at zero: the images would carry nothing
        model.model.multi_modal_projector.mm_input_projection_weight.normal_(0, init_std)
    processor = Gemma3Processor(image_processor=Gemma3ImageProcessor(size={"height": image_size, "width": image_size}),
                                tokenizer=tok, image_seq_length=4,
                                chat_template=LLAVA_CHAT_TEMPLATE.replace("<image>", "<start_of_image>"))
    return model, processor


def tiny_decoder(model_type: str = "llama", attn: str = "sdpa", num_layers: int = 4, hidden: int = 64,
                 seed: int = 0, init_std: float = 0.2):
    """A tiny text-only decoder (``llama``, ``qwen2``, ``mistral`` or ``gemma3_text``) and a tokenizer.
    ``gemma3_text`` gets Gemma 3's layout at a small scale: sliding-window layers (window 8 tokens, so that the
    test prompts run past it) with every third layer global, each kind with its own rotary embedding."""
    from transformers import AutoModelForCausalLM
    from transformers.models.auto import CONFIG_MAPPING

    tok = train_tokenizer("llava")
    extra = {"sliding_window": None} if model_type == "mistral" else {}
    if model_type == "gemma3_text":
        extra = dict(head_dim=hidden // 4, query_pre_attn_scalar=hidden // 4, sliding_window=8,
                     layer_types=["full_attention" if (i + 1) % 3 == 0 else "sliding_attention"
                                  for i in range(num_layers)])
    config = CONFIG_MAPPING[model_type](
        vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=num_layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096, initializer_range=init_std,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        tie_word_embeddings=False, **extra)
    config._attn_implementation = attn
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config).eval(), tok


def sample_image(width: int = 112, height: int = 84, seed: int = 0):
    """A PIL image of coloured blocks on a noisy background (deterministic)."""
    from PIL import Image

    g = torch.Generator().manual_seed(seed)
    img = (torch.rand(height, width, 3, generator=g) * 60 + 100).to(torch.uint8)
    for _ in range(3):
        x, y = int(torch.randint(0, max(width - 24, 1), (1,), generator=g)), int(torch.randint(0, max(height - 24, 1), (1,), generator=g))
        colour = (torch.rand(3, generator=g) * 255).to(torch.uint8)
        img[y:y + 20, x:x + 20] = colour
    return Image.fromarray(img.numpy())
