"""The bundled models' tokenizers: a byte-level BPE trained on the suite's language, with the real models'
special tokens and chat templates (Qwen2-VL-Instruct's, llava-1.5-hf's)."""
from __future__ import annotations

from dashvl.tiny import LLAVA_SPECIALS, QWEN_SPECIALS, byte_level_bpe

from .. import suite as synth

__all__ = ["QWEN_CHAT_TEMPLATE", "LLAVA_CHAT_TEMPLATE", "train_tokenizer"]

# The real models' chat templates (Qwen2-VL-Instruct's, llava-1.5-hf's), plus string content for both.
QWEN_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture {{ image_count.value }}: "
    "{% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
LLAVA_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': ' }}{% endif %}"
    "{% if message['content'] is string %}{{ message['content'] + ' ' }}{% else %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
    "{% if message['role'] != 'assistant' %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] + ' ' }}"
    "{% endfor %}{% else %}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{% generation %}{{ content['text'] + ' ' }}{% endgeneration %}{% endfor %}{% endif %}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)


def _corpus() -> list[str]:
    """The suite's language (every question form, answer, prompt suffix) and the chat templates' words."""
    lines = ["You are a helpful assistant.", "system", "user", "assistant", "USER: ASSISTANT:",
             synth.MME_SUFFIX, synth.LMMS_POST_PROMPT, "Yes", "No", "yes", "no", " Yes", " No",
             "Describe the image.", "What is in this picture?", "What is shown?"]
    for c in synth.COLOURS:
        for s in synth.SHAPES:
            lines += [f"Is there a {c} {s} in the image?", f"Is there an {c} {s} in the image?",
                      f"Is the {c} {s} on the left, right, top or bottom of the image?"]
        lines += [f"What shape is the {c} object?", c, f" {c}"]
    for s in synth.SHAPES:
        lines += [f"What colour is the {s}?", s, f" {s}", f"How many {s}s are there?"]
    lines += ["How many shapes are in the image?", "What word is written in the image?"]
    lines += [str(n) for n in range(10)] + [f" {n}" for n in range(10)] + list(synth.POSITIONS)
    lines += list(synth.WORDS) + [f" {w}" for w in synth.WORDS] + [w.upper() for w in synth.WORDS]
    return lines * 20


def train_tokenizer(family: str, vocab_size: int = 640):
    """A byte-level BPE trained on the suite's language, with ``family``'s special tokens and chat template."""
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    tok = byte_level_bpe(_corpus(), QWEN_SPECIALS if family == "qwen2_vl" else LLAVA_SPECIALS, vocab_size)
    if family == "qwen2_vl":
        return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                       padding_side="left", chat_template=QWEN_CHAT_TEMPLATE,
                                       model_max_length=32768)
    # Llama tokenizers put <s> in front of every text; the template leaves it to the tokenizer.
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                       special_tokens=[("<s>", tok.token_to_id("<s>"))])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="<pad>", padding_side="left", chat_template=LLAVA_CHAT_TEMPLATE,
                                   model_max_length=4096)
