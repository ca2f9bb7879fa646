"""The bundled models' architectures, built from config with random weights: a small Qwen2-VL and a small LLaVA-1.5."""
from __future__ import annotations

import torch

from dashvl.tiny import QWEN_SPECIALS

from .tokenizer import QWEN_CHAT_TEMPLATE, LLAVA_CHAT_TEMPLATE, train_tokenizer

__all__ = ["NAMES", "BUILDERS", "build_qwen2_vl_synth", "build_llava_synth"]

NAMES = ("qwen2-vl-synth", "llava-synth", "qwen2-vl-smollm2", "llava-smollm2")  # the last two: see .smol



def build_qwen2_vl_synth(tiny: bool = False, seed: int = 0):
    """A small Qwen2-VL (text 256 wide × 4 layers, vision 192 wide × 4 layers) and its processor."""
    from transformers import (Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLImageProcessor,
                              Qwen2VLProcessor, Qwen2VLVideoProcessor)

    tok = train_tokenizer("qwen2_vl")
    ids = {t: tok.convert_tokens_to_ids(t) for t in QWEN_SPECIALS}
    hidden, layers, heads, vdim, vdepth = (64, 2, 4, 32, 1) if tiny else (256, 4, 4, 192, 4)
    half = hidden // heads // 2
    mrope = [half - 2 * (3 * half // 8), 3 * half // 8, 3 * half // 8]  # the real [16, 24, 24], scaled
    text = dict(vocab_size=len(tok), hidden_size=hidden, intermediate_size=3 * hidden, num_hidden_layers=layers,
                num_attention_heads=heads, num_key_value_heads=2, max_position_embeddings=4096,
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": mrope},
                bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"],
                tie_word_embeddings=False)
    vision = dict(depth=vdepth, embed_dim=vdim, hidden_size=hidden, num_heads=max(1, vdim // 64), mlp_ratio=4,
                  patch_size=14, spatial_merge_size=2, temporal_patch_size=2)
    config = Qwen2VLConfig(text_config=text, vision_config=vision, image_token_id=ids["<|image_pad|>"],
                           video_token_id=ids["<|video_pad|>"], vision_start_token_id=ids["<|vision_start|>"],
                           vision_end_token_id=ids["<|vision_end|>"], tie_word_embeddings=False)
    torch.manual_seed(seed)
    model = Qwen2VLForConditionalGeneration(config)
    size = {"shortest_edge": 56 * 56, "longest_edge": 448 * 448}  # every suite image at its own resolution
    processor = Qwen2VLProcessor(image_processor=Qwen2VLImageProcessor(size=size),
                                 video_processor=Qwen2VLVideoProcessor(size=size), tokenizer=tok,
                                 chat_template=QWEN_CHAT_TEMPLATE)
    return model, processor


def build_llava_synth(tiny: bool = False, seed: int = 0):
    """A small LLaVA-1.5 (CLIP tower 192 wide × 4 layers at 336 px, 2-layer projector, Llama 256 wide × 4 layers)."""
    from transformers import (CLIPImageProcessor, CLIPVisionConfig, LlamaConfig, LlavaConfig,
                              LlavaForConditionalGeneration, LlavaProcessor)

    tok = train_tokenizer("llava")
    hidden, layers, heads, vdim, vdepth, side = (64, 2, 4, 32, 1, 112) if tiny else (256, 4, 4, 192, 4, 336)
    text = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=3 * hidden,
                       num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=2,
                       max_position_embeddings=4096, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                       pad_token_id=tok.pad_token_id, tie_word_embeddings=False)
    vision = CLIPVisionConfig(hidden_size=vdim, intermediate_size=4 * vdim, num_hidden_layers=vdepth,
                              num_attention_heads=max(1, vdim // 64), image_size=side, patch_size=14,
                              projection_dim=hidden)
    n = (side // 14) ** 2
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_index=tok.convert_tokens_to_ids("<image>"),
                         vision_feature_select_strategy="default", vision_feature_layer=-1,
                         image_seq_length=n, projector_hidden_act="gelu", tie_word_embeddings=False)
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config)
    # Resize to a square without cropping: a centre crop would cut objects out of wide or tall images.
    image_processor = CLIPImageProcessor(size={"height": side, "width": side}, do_center_crop=False,
                                         crop_size={"height": side, "width": side})
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tok, patch_size=14,
                               vision_feature_select_strategy="default", num_additional_image_tokens=1,
                               chat_template=LLAVA_CHAT_TEMPLATE)
    return model, processor


BUILDERS = {"qwen2-vl-synth": build_qwen2_vl_synth, "llava-synth": build_llava_synth}
