"""Train the two bundled models, ``qwen2-vl-synth`` and ``llava-synth``, from scratch on ``dashvl.synth``.

Builds a small ``Qwen2VLForConditionalGeneration`` (+ ``Qwen2VLProcessor``) or ``LlavaForConditionalGeneration``
(CLIP vision tower, Llama text model, + ``LlavaProcessor``) with a byte-level BPE tokenizer trained here on the
suite's language and the real models' chat templates; trains it on the ``train`` split (each image a multi-turn
chat, loss on the answers, plus an auxiliary per-visual-token loss that is not saved; bf16 autocast, AdamW, a
cosine schedule over a wall-clock budget or a step count); saves it in bfloat16 with ``save_pretrained``;
evaluates greedy generations on the ``test`` split per family; writes a model card.

    # what made assets/models/ (one H200, both models at once; see each model card):
    #   stage 1 (an earlier recipe: one question per image, no auxiliary loss), 4.5 min:
    python bench/train_synth.py --model qwen2-vl-synth --minutes 4.5 --batch 96 --lr 1e-3 --turns 1 --aux 0 --out OUT --pack &
    #   stage 2, 1.2 min:
    python bench/train_synth.py --model qwen2-vl-synth --init assets/models/qwen2-vl-synth --minutes 1.2 --batch 64 \
        --lr 1e-3 --warmup 50 --eval-per-family 200 --out OUT --pack &
    #   stage 3, 7.3 min (the auxiliary loss weighted towards the cells under objects and words):
    python bench/train_synth.py --model qwen2-vl-synth --init assets/models/qwen2-vl-synth --minutes 7.3 --batch 64 \
        --lr 1e-3 --warmup 50 --aux-fg 4 --workers 7 --out OUT --pack &
    # (the same for llava-synth).
    #   stages 4 and 5 (two reading losses on the visual tokens, a per-model mix of families), 7.8 and 6.4 min:
    bash bench/run_gpu_train.sh 7.8 reading=4 reading=4
    bash bench/run_gpu_train.sh 6.4 position=4 existence=3,colour=3,reading=3 6e-4
    #   stage 6 (llava-synth: No questions that share the drawn colour; two variants side by side, A kept), 7.8 min:
    bash bench/run_gpu_variants.sh 7.8 "A:--lr 8e-4 --mix existence=5,colour=4 --hard-no 0.7" \
        "B:--lr 1e-3 --mix existence=5,colour=4 --hard-no 0.85 --aux-shape 3"
    # a CPU smoke test:
    python bench/train_synth.py --model qwen2-vl-synth --steps 3 --batch 4 --tiny --eval-per-family 4 --out /tmp/s

Besides ``OUT/<name>/`` (the model folder) it writes ``OUT/<name>.safetensors`` and ``OUT/<name>.tar`` (the
folder's other files) when ``--pack`` is given, for the device tool's limit on the number of files returned.
Why reading stayed at chance until stage 4: the word under a visual token was not decodable from the tokens the
LLM receives (a linear probe on stage 3's frozen visual tokens: word 4-7% on held-out images, chance 2.5%; colour
99-100%), so the LLM had nothing to read and answered one word. The labels were right (word cells, Qwen2-VL's 2×2
merge order, LLaVA's grid: checked against the patches), but the only word target was the whole word at every word
cell, a few percent of the auxiliary loss's weight. ``--aux-word`` adds a local target (the letter under each word
cell) and a pooled one (the word from the mean of its cells' tokens); ``--mix`` shows more reading images. With
them, stage 4 took reading from 3% to 99% (Qwen2-VL) and 74% (LLaVA) in 7.8 minutes.

Why llava-synth's existence sat at 76% for three stages: it answered from the colour alone
(``bench/existence_errors.py``: Yes to 98 of 99 test No questions whose colour was drawn, No to all 101 whose colour
was not; about half of the suite's No questions are of each kind, hence 75%). ``--hard-no`` draws training No
questions that share the drawn object's colour more often, so that only the shape answers them; stage 6
(``--hard-no 0.7``) took existence to 97%.

Qwen2-VL trains with the vision attention packed into one call per layer (``packed_vision_sdpa``, registered for
the vision tower only and never saved) and the M-RoPE / vision rotary indices computed by the data workers, instead
of transformers' per-image / per-row loops (``--no-fast`` for the stock path; the same numbers in float32).

It saves (and packs) once before the evaluation, so that a run stopped during it keeps the trained weights, and
again afterwards with the accuracy in the card and ``eval_test.json`` (``--eval-per-family 0``: no evaluation;
stages 4 and 5 were evaluated on the CPU afterwards). Accuracy per stage: see the model cards.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import sys
import tarfile
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from dashvl import synth  # noqa: E402
from dashvl.models import chat_prompt  # noqa: E402
from dashvl.tiny import LLAVA_SPECIALS, QWEN_SPECIALS, byte_level_bpe  # noqa: E402

NAMES = ("qwen2-vl-synth", "llava-synth")

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

# Training mix per round: the harder families more often.
ROUND = ("existence", "existence", "colour", "shape", "count", "count", "position", "position", "reading", "reading")


def parse_mix(spec: str | None) -> tuple[str, ...]:
    """``"existence=2,colour=1,...,reading=6"`` -> a round of families (``ROUND``'s order, each repeated its count);
    families left out keep their count in ``ROUND``. None or "" -> ``ROUND``."""
    if not spec:
        return ROUND
    counts = {f: ROUND.count(f) for f in synth.FAMILIES}
    for part in spec.split(","):
        f, _, n = part.partition("=")
        if f.strip() not in counts or not n.strip().isdigit():
            raise ValueError(f"--mix wants family=count,... with families from {synth.FAMILIES}; got {part!r}")
        counts[f.strip()] = int(n)
    if not any(counts.values()):
        raise ValueError("--mix: every family has count 0")
    return tuple(f for f in synth.FAMILIES for _ in range(counts[f]))


# --- tokenizer and models ------------------------------------------------------------------------------------

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


# --- data ----------------------------------------------------------------------------------------------------

def prompt_for(processor, question: str) -> str:
    return chat_prompt(processor, question)


def answer_ids(processor, answer: str) -> list[int]:
    """The tokens the model is trained to generate after the prompt: the answer and the end-of-turn token."""
    tok = processor.tokenizer
    lead = " " if tok.bos_token == "<s>" else ""  # LLaVA answers follow "ASSISTANT:" after a space
    return tok(lead + answer, add_special_tokens=False).input_ids + [tok.eos_token_id]


def _unique(items):
    return [x for x in items if items.count(x) == 1]


def absent_pair(objs, c: str, s: str, rng, hard_no: float = 0.0):
    """A (colour, shape) not among ``objs`` that shares the colour or the shape of the drawn (``c``, ``s``), as the
    suite's No questions do. With probability ``hard_no`` it shares the colour (when one exists): only the shape then
    tells it apart. None if every such pair is drawn."""
    same_shape = [(c2, s) for c2 in synth.COLOURS if (c2, s) not in objs]
    same_colour = [(c, s2) for s2 in synth.SHAPES if (c, s2) not in objs]
    if same_colour and rng.random() < hard_no:
        return rng.choice(same_colour)
    pool = same_shape + same_colour
    return rng.choice(pool) if pool else None


def existence_question(c: str, s: str) -> str:
    return f"Is there {synth._a(c)} {c} {s} in the image?"


def extra_questions(scene, rng, hard_no: float = 0.0) -> list[tuple[str, str]]:
    """Every other question of the suite's families that ``scene`` (what ``synth._build`` drew) settles; its No
    existence question shares the present object's colour with probability ``hard_no`` (see ``absent_pair``)."""
    objs = [(c, s) for c, s, _ in scene.objects]
    out = []
    if objs:
        c, s = rng.choice(objs)
        out.append((existence_question(c, s), "Yes"))
        absent = absent_pair(objs, c, s, rng, hard_no)
        if absent:
            out.append((existence_question(*absent), "No"))
    for shape in _unique([s for _, s in objs]):
        out.append((f"What colour is the {shape}?", next(c for c, s in objs if s == shape)))
    for colour in _unique([c for c, _ in objs]):
        out.append((f"What shape is the {colour} object?", next(s for c, s in objs if c == colour)))
    if 1 <= len(objs) <= 6:
        out.append(("How many shapes are in the image?", str(len(objs))))
    for c, s, box in scene.objects:
        if objs.count((c, s)) != 1:
            continue
        cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
        for pos in synth.POSITIONS:
            (x0, x1), (y0, y1) = synth._region(pos, scene.w, scene.h)
            if x0 <= cx <= x1 and y0 <= cy <= y1:
                out.append((f"Is the {c} {s} on the left, right, top or bottom of the image?", pos))
    if len(scene.words) == 1:
        out.append(("What word is written in the image?", scene.words[0][0]))
    return out


_LETTER_EDGES: dict[str, list[float]] = {}


def _letter_edges(word: str) -> list[float]:
    """Where each letter of ``word.upper()`` starts and the last one ends, as fractions of the rendered text's
    width (the suite's font is proportional; its widths scale with the size, so one size settles the fractions)."""
    if word not in _LETTER_EDGES:
        font, text = synth._font(40), word.upper()
        total = font.getlength(text)
        _LETTER_EDGES[word] = [font.getlength(text[:k]) / total for k in range(len(text) + 1)]
    return _LETTER_EDGES[word]


def cell_labels(scene, rows: int, cols: int) -> torch.Tensor:
    """``[rows * cols, 4]`` (raster order, the order of the visual tokens the LLM receives: checked for Qwen2-VL's
    2×2 merge and LLaVA's grid): the colour, shape and word (index + 1; 0 = none) under each visual token's cell,
    and the letter (A = 1 … Z = 26; 0 = none) of that word at the cell centre's x, for word cells. Targets of the
    auxiliary losses on the visual tokens."""
    colours, words = list(synth.COLOURS), list(synth.WORDS)
    lab = torch.zeros(rows, cols, 4, dtype=torch.long)
    for c, s, (x0, y0, x1, y1) in scene.objects:
        r0, r1 = math.floor(y0 / scene.h * rows - 0.5) + 1, math.ceil(y1 / scene.h * rows - 0.5)
        c0, c1 = math.floor(x0 / scene.w * cols - 0.5) + 1, math.ceil(x1 / scene.w * cols - 0.5)
        if r0 < r1 and c0 < c1:
            lab[max(r0, 0):r1, max(c0, 0):c1, 0] = colours.index(c) + 1
            lab[max(r0, 0):r1, max(c0, 0):c1, 1] = synth.SHAPES.index(s) + 1
        else:  # smaller than a cell: the cell holding its centre
            r, cc = min(int((y0 + y1) / 2 / scene.h * rows), rows - 1), min(int((x0 + x1) / 2 / scene.w * cols), cols - 1)
            lab[r, cc, 0], lab[r, cc, 1] = colours.index(c) + 1, synth.SHAPES.index(s) + 1
    for w, (x0, y0, x1, y1) in scene.words:
        r0, r1 = int(y0 / scene.h * rows), max(int(y0 / scene.h * rows) + 1, math.ceil(y1 / scene.h * rows))
        c0, c1 = int(x0 / scene.w * cols), max(int(x0 / scene.w * cols) + 1, math.ceil(x1 / scene.w * cols))
        lab[r0:r1, c0:c1, 2] = words.index(w) + 1
        # the text spans the box less its padding (3-7 px, drawn at random: 5 assumed)
        edges, text = _letter_edges(w), w.upper()
        tx0, tw = x0 + 5, max(1.0, (x1 - x0) - 10)
        for cc in range(max(c0, 0), min(c1, cols)):
            f = ((cc + 0.5) / cols * scene.w - tx0) / tw
            if 0 <= f < 1:
                k = max(i for i in range(len(text)) if edges[i] <= f)
                lab[r0:r1, cc, 3] = ord(text[k]) - ord("A") + 1
    return lab.view(-1, 4)


AUX_CLASSES = (len(synth.COLOURS) + 1, len(synth.SHAPES) + 1, len(synth.WORDS) + 1)
N_LETTERS = 27  # the letter under a word cell's centre: none, A … Z


class TrainStream(torch.utils.data.Dataset):
    """Item ``i``: a train image (its family from ``round_``, by default ``ROUND``) with ``turns`` questions about it
    as a multi-turn chat (its own question first, then others the scene settles), questions sometimes followed by
    an eval suffix; ``input_ids`` / ``labels`` (-100 except on the answers and end-of-turn tokens), the image
    tensors, and ``cell_labels`` for the auxiliary losses on the visual tokens. With ``positions`` (Qwen2-VL only)
    also ``position_ids``: the M-RoPE indices ``get_rope_index`` would compute for it, here in the data worker."""

    def __init__(self, processor, length: int, turns: int = 4, seed_offset: int = 0, round_=ROUND,
                 positions: bool = False, hard_no: float = 0.0):
        self.processor, self.length, self.offset, self.turns = processor, length, seed_offset, turns
        self.hard_no = hard_no
        self.round = tuple(round_)
        self.per_round = {f: self.round.count(f) for f in synth.FAMILIES}
        self.qwen = processor.tokenizer.bos_token != "<s>"
        self.positions = positions and self.qwen
        self._ids: dict[str, list[int]] = {}  # token ids of answers and follow-up turns (a few hundred strings)

    def _tokens(self, text: str, answer: bool = False) -> list[int]:
        key = ("a" if answer else "c") + text
        if key not in self._ids:
            self._ids[key] = (answer_ids(self.processor, text) if answer
                              else self.processor.tokenizer(text, add_special_tokens=False).input_ids)
        return self._ids[key]

    def __len__(self):
        return self.length

    def _suffixed(self, q: str, rng) -> str:
        if q.startswith("Is there") and rng.random() < 0.35:
            q += synth.MME_SUFFIX
        if rng.random() < 0.35:
            q += synth.LMMS_POST_PROMPT
        return q

    def __getitem__(self, i):
        import random
        i += self.offset
        r, j = divmod(i, len(self.round))
        family = self.round[j]
        k = r * self.per_round[family] + self.round[:j].count(family)
        scene, q0, a0 = synth._build("train", family, k)
        rng = random.Random(f"turns/{i}")
        if family == "existence" and a0 == "No" and self.hard_no:  # redraw the No question (see absent_pair)
            objs = [(c, s) for c, s, _ in scene.objects]
            absent = absent_pair(objs, *rng.choice(objs), rng, self.hard_no)
            q0 = existence_question(*absent) if absent else q0
        extra = [qa for qa in extra_questions(scene, rng, self.hard_no) if qa[0] != q0]
        rng.shuffle(extra)
        qas = [(q0, a0)] + extra[:self.turns - 1]
        enc = self.processor(text=[prompt_for(self.processor, self._suffixed(q0, rng))], images=[scene.img],
                             return_tensors="pt")
        ids, labels = [enc["input_ids"][0]], [torch.full_like(enc["input_ids"][0], -100)]
        for t, (q, a) in enumerate(qas):
            ans = torch.tensor(self._tokens(a, answer=True))
            ids.append(ans)
            labels.append(ans)
            if t + 1 < len(qas):
                nq = self._suffixed(qas[t + 1][0], rng)
                cont = (f"\n<|im_start|>user\n{nq}<|im_end|>\n<|im_start|>assistant\n" if self.qwen
                        else f"USER: {nq} ASSISTANT:")
                c = torch.tensor(self._tokens(cont))
                ids.append(c)
                labels.append(torch.full_like(c, -100))
        item = {"input_ids": torch.cat(ids), "labels": torch.cat(labels), "pixel_values": enc["pixel_values"]}
        if "mm_token_type_ids" in enc:
            mm = enc["mm_token_type_ids"][0]
            item["mm_token_type_ids"] = torch.cat([mm, torch.zeros(len(item["input_ids"]) - len(mm), dtype=mm.dtype)])
        if "image_grid_thw" in enc:
            item["image_grid_thw"] = enc["image_grid_thw"]
            _, gh, gw = enc["image_grid_thw"][0].tolist()
            item["cell_labels"] = cell_labels(scene, gh // 2, gw // 2)
            if self.positions:
                item["position_ids"] = mrope_position_ids(item["input_ids"], item["mm_token_type_ids"],
                                                          enc["image_grid_thw"], self.processor.image_processor.merge_size)
        else:
            side = enc["pixel_values"].shape[-1] // 14
            item["cell_labels"] = cell_labels(scene, side, side)
        return item


def mrope_position_ids(input_ids, mm_token_type_ids, grid_thw, merge_size: int) -> torch.Tensor:
    """``[3, len]``: Qwen2-VL's M-RoPE indices of one unpadded sequence, by transformers' own ``get_rope_index``
    (run here, on the CPU of a data worker, instead of per row on the GPU in the training step)."""
    import types
    from transformers.models.qwen2_vl.modeling_qwen2_vl import Qwen2VLModel

    shim = types.SimpleNamespace(config=types.SimpleNamespace(vision_config=types.SimpleNamespace(
        spatial_merge_size=merge_size)))
    shim.get_vision_position_ids = lambda *a, **k: Qwen2VLModel.get_vision_position_ids(shim, *a, **k)
    pos, _ = Qwen2VLModel.get_rope_index(shim, input_ids[None], mm_token_type_ids[None], image_grid_thw=grid_thw)
    return pos[:, 0]


def collate(items, pad_id: int, merge_size: int = 2):
    """Right-padded batch; Qwen2-VL's patches are concatenated, LLaVA's images stacked. ``cell_image``: the image
    (row) of each visual token. With items' ``position_ids`` (Qwen2-VL): ``position_ids`` ``[3, batch, len]`` (0 on
    padding, as ``get_rope_index`` leaves it) and the vision tower's own inputs, precomputed by transformers'
    helpers: ``vision_position_ids``, ``cu_seqlens``, ``max_seqlen``."""
    n = max(len(it["input_ids"]) for it in items)
    out = {"input_ids": torch.full((len(items), n), pad_id), "attention_mask": torch.zeros(len(items), n, dtype=torch.long),
           "labels": torch.full((len(items), n), -100)}
    if "mm_token_type_ids" in items[0]:
        out["mm_token_type_ids"] = torch.zeros(len(items), n, dtype=torch.long)
    if "position_ids" in items[0]:
        out["position_ids"] = torch.zeros(3, len(items), n, dtype=items[0]["position_ids"].dtype)
    for b, it in enumerate(items):
        m = len(it["input_ids"])
        out["input_ids"][b, :m] = it["input_ids"]
        out["attention_mask"][b, :m] = 1
        out["labels"][b, :m] = it["labels"]
        if "mm_token_type_ids" in it:
            out["mm_token_type_ids"][b, :m] = it["mm_token_type_ids"]
        if "position_ids" in it:
            out["position_ids"][:, b, :m] = it["position_ids"]
    out["pixel_values"] = torch.cat([it["pixel_values"] for it in items])
    out["cell_labels"] = torch.cat([it["cell_labels"] for it in items])
    out["cell_image"] = torch.cat([torch.full((len(it["cell_labels"]),), b) for b, it in enumerate(items)])
    if "image_grid_thw" in items[0]:
        out["image_grid_thw"] = torch.cat([it["image_grid_thw"] for it in items])
    if "position_ids" in items[0]:
        from transformers.vision_utils import get_vision_cu_seqlens, get_vision_position_ids
        grid = out["image_grid_thw"]
        out["vision_position_ids"] = get_vision_position_ids(grid, merge_size)
        out["cu_seqlens"] = get_vision_cu_seqlens(grid)
        out["max_seqlen"] = torch.tensor(int((grid[:, 1] * grid[:, 2]).max()))
    return out


def _collate_with(pad_id, merge_size: int = 2):
    import functools
    return functools.partial(collate, pad_id=pad_id, merge_size=merge_size)


def _worker_init(_):
    torch.set_num_threads(1)


# --- evaluation ----------------------------------------------------------------------------------------------

@torch.no_grad()
def evaluate(model, processor, per_family: int, batch: int = 250, workers: int = 4, device: str = "cpu",
             log=print, every_answer: bool = False) -> dict:
    """Greedy answers to ``per_family`` test questions of every family: accuracy per family and examples (the first
    24 and up to 36 wrong ones; with ``every_answer``, all)."""
    samples_ds = _TestSamples(per_family)
    loader = torch.utils.data.DataLoader(samples_ds, batch_size=batch, num_workers=workers, collate_fn=list,
                                         worker_init_fn=_worker_init)
    correct = {f: 0 for f in synth.FAMILIES}
    total = {f: 0 for f in synth.FAMILIES}
    examples = []
    model.eval()
    for samples in loader:
        enc = processor(text=[prompt_for(processor, s.question) for s in samples], images=[s.image for s in samples],
                        return_tensors="pt", padding=True).to(device)
        out = model.generate(**enc, max_new_tokens=6, do_sample=False)
        texts = processor.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
        for s, t in zip(samples, texts):
            ok = synth.is_correct(t, s.answers)
            correct[s.family] += ok
            total[s.family] += 1
            if every_answer or len(examples) < 24 or not ok and len(examples) < 60:
                examples.append({"id": s.id, "question": s.question, "answer": s.answer, "generated": t, "ok": ok})
    acc = {f: correct[f] / total[f] for f in synth.FAMILIES}
    log("accuracy " + json.dumps({f: round(a, 4) for f, a in acc.items()}))
    return {"accuracy": acc, "n": total, "examples": examples}


class _TestSamples(torch.utils.data.Dataset):
    def __init__(self, per_family: int):
        self.n = per_family * len(synth.FAMILIES)

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return synth.make_sample("test", synth.FAMILIES[i % len(synth.FAMILIES)], i // len(synth.FAMILIES))


# --- training ------------------------------------------------------------------------------------------------

# Qwen2-VL's vision attention loops over the images of a batch (one SDPA call per image, after a ``.tolist()``) unless
# the attention implementation's name contains "flash": then it makes one call with ``cu_seq_lens_q``. Training
# registers this function under such a name for the vision tower only: the images padded to one batch, one SDPA call
# with a key-padding mask (the same result as the per-image calls: checked in float32). Never saved: the model's
# config is set back to "sdpa" before saving.
PACKED_VISION_ATTENTION = "flash_packed_sdpa_dashvl_train"
_PACK_INDEX: dict = {}


def packed_vision_sdpa(module, query, key, value, attention_mask=None, dropout: float = 0.0, scaling=None,
                       cu_seq_lens_q=None, max_length_q=None, **kwargs):
    """``query`` etc. ``[1, heads, tokens, dim]`` holding the images' patches back to back (``cu_seq_lens_q``);
    returns ``[1, tokens, heads, dim]`` as the flash implementations do: attention within each image only."""
    cu = cu_seq_lens_q
    n, length, heads, dim = cu.numel() - 1, query.shape[2], query.shape[1], query.shape[3]
    longest = int(max_length_q)
    cached = _PACK_INDEX.get("last")
    if cached is None or cached[0] is not cu or cached[1] != longest:  # built once per forward (all layers share cu)
        sizes = (cu[1:] - cu[:-1]).long()
        img = torch.repeat_interleave(torch.arange(n, device=cu.device), sizes, output_size=length)
        flat = img * longest + torch.arange(length, device=cu.device) - cu[:-1].long()[img]
        mask = (torch.arange(longest, device=cu.device)[None, :] < sizes[:, None])[:, None, None, :]
        _PACK_INDEX["last"] = cached = (cu, longest, flat, mask)
    _, _, flat, mask = cached

    def padded(x):  # [1, heads, tokens, dim] -> [images, heads, longest, dim], zeros past each image's end
        out = x.new_zeros(n * longest, heads, dim).index_copy(0, flat, x[0].transpose(0, 1))
        return out.view(n, longest, heads, dim).transpose(1, 2)

    out = torch.nn.functional.scaled_dot_product_attention(
        padded(query), padded(key), padded(value), attn_mask=mask, dropout_p=dropout, scale=scaling)
    return out.transpose(1, 2).reshape(n * longest, heads, dim).index_select(0, flat)[None], None


def use_packed_vision_attention(model) -> None:
    """Qwen2-VL's vision tower: one attention call per layer for all the images of a batch (training only)."""
    from transformers import AttentionInterface

    AttentionInterface.register(PACKED_VISION_ATTENTION, packed_vision_sdpa)
    model.model.visual.config._attn_implementation = PACKED_VISION_ATTENTION


def qwen_fast_forward(model, batch: dict, grid_thw_cpu: torch.Tensor):
    """Qwen2-VL's forward with what the data workers precomputed: the vision tower's rotary positions,
    ``cu_seqlens`` and ``max_seqlen`` (no per-image loop, no ``.tolist()`` of GPU tensors), and the M-RoPE
    ``position_ids`` (no per-row ``get_rope_index``). The same computation as ``model(**batch)``."""
    pixel_values = batch.pop("pixel_values")
    vision = {"position_ids": batch.pop("vision_position_ids"), "cu_seqlens": batch.pop("cu_seqlens"),
              "max_seqlen": batch.pop("max_seqlen")}
    batch.pop("image_grid_thw", None)
    batch.pop("mm_token_type_ids", None)
    image = model.model.get_image_features(pixel_values, grid_thw_cpu, return_dict=True, **vision)
    return model(**batch, mm_encoder_outputs={"image": image})


def _aux_ce(logits, target, fg_weight: float):
    """Cross-entropy over the visual tokens, the cells under an object or word weighted ``fg_weight`` times a
    background cell's: most cells are background, and an unweighted mean is mostly about them."""
    ce = torch.nn.functional.cross_entropy(logits, target, reduction="none")
    w = 1.0 + (fg_weight - 1.0) * (target > 0).float()
    return (ce * w).sum() / w.sum()


def _masked_mean_ce(logits, target, mask):
    ce = torch.nn.functional.cross_entropy(logits, target, reduction="none")
    return (ce * mask).sum() / mask.sum().clamp(min=1)


def train(name: str, args, log=print) -> dict:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.backends.cuda.matmul.allow_tf32 = True
    if args.init:
        from transformers import AutoModelForImageTextToText, AutoProcessor
        model = AutoModelForImageTextToText.from_pretrained(args.init, dtype=torch.float32)
        processor = AutoProcessor.from_pretrained(args.init)
    else:
        model, processor = BUILDERS[name](tiny=args.tiny, seed=args.seed)
    model.config._attn_implementation = "sdpa"
    qwen = hasattr(model.model, "visual")
    fast = qwen and args.fast
    if fast:
        use_packed_vision_attention(model)
    model.to(device).train()
    n_params = sum(p.numel() for p in model.parameters())
    round_ = parse_mix(args.mix)
    log(f"{name}: {n_params / 1e6:.2f} M parameters, vocab {len(processor.tokenizer)}, device {device}; mix per round "
        + ", ".join(f"{f} {round_.count(f)}" for f in synth.FAMILIES) + ("; packed vision attention" if fast else "")
        + (f"; hard No questions {args.hard_no}" if args.hard_no else "")
        + (f"; shape auxiliary weight {args.aux_shape}" if args.aux_shape != 1 else ""))
    max_steps = args.steps or 10 ** 7
    ds = TrainStream(processor, length=max_steps * args.batch, turns=args.turns, round_=round_, positions=fast,
                     hard_no=args.hard_no)
    # Auxiliary losses (training only, not saved): a linear probe on the visual tokens the LLM receives predicts
    # the colour, shape and word under each token's cell, so that the vision tower learns from the first steps;
    # with --aux-word also the letter under each word cell, and the word from the mean of its cells' tokens.
    hidden = model.config.text_config.hidden_size
    n_out = sum(AUX_CLASSES) + N_LETTERS
    aux_head = torch.nn.Sequential(torch.nn.LayerNorm(hidden), torch.nn.Linear(hidden, n_out)).to(device)
    word_head = torch.nn.Sequential(torch.nn.LayerNorm(hidden), torch.nn.Linear(hidden, len(synth.WORDS))).to(device)
    feats = {}
    visual_out = model.model.visual.merger if qwen else model.model.multi_modal_projector
    hook = visual_out.register_forward_hook(lambda mod, inp, out: feats.__setitem__("v", out))
    merge = getattr(processor.image_processor, "merge_size", 2)
    loader = torch.utils.data.DataLoader(ds, batch_size=args.batch, num_workers=args.workers,
                                         collate_fn=_collate_with(processor.tokenizer.pad_token_id, merge),
                                         worker_init_fn=_worker_init, pin_memory=device == "cuda",
                                         prefetch_factor=6 if args.workers else None,
                                         persistent_workers=False)
    named = (list(model.named_parameters()) + list(aux_head.named_parameters(prefix="aux"))
             + list(word_head.named_parameters(prefix="aux_word")))
    decay = [p for n, p in named if p.ndim >= 2 and "embed" not in n]
    no_decay = [p for n, p in named if not (p.ndim >= 2 and "embed" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.98), eps=1e-8, fused=device == "cuda")
    budget = args.minutes * 60 if not args.steps else None
    # accuracy of the probes on the word cells (each batch is new data: measured before the step learns from it):
    # per-cell word, letter, word from the pooled word tokens (correct, total)
    stats = torch.zeros(10, device=device)  # + colour and shape on object cells
    t0 = time.time()
    step, ema, waited, t_wait = 0, None, 0.0, time.time()
    for batch in loader:
        waited += time.time() - t_wait
        frac = step / args.steps if args.steps else (time.time() - t0) / budget
        if frac >= 1:
            break
        warm = min(1.0, (step + 1) / args.warmup)
        lr = args.lr * warm * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * frac)))
        for g in opt.param_groups:
            g["lr"] = lr
        grid_cpu = batch["image_grid_thw"] if fast else None
        if fast:
            batch["max_seqlen"] = int(batch["max_seqlen"])
        batch = {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}
        cells, cell_image = batch.pop("cell_labels"), batch.pop("cell_image")
        n_img = batch["input_ids"].shape[0]
        with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=device == "cuda"):
            lm_loss = (qwen_fast_forward(model, batch, grid_cpu) if fast else model(**batch)).loss
            v = feats.pop("v").reshape(-1, hidden)
            logits = aux_head(v).float()
            word_cell = cells[:, 2] > 0
            wf = word_cell.float()
            count = torch.zeros(n_img, device=device).index_add(0, cell_image, wf)
            pooled = torch.zeros(n_img, hidden, device=device, dtype=v.dtype).index_add(0, cell_image, v * wf[:, None].to(v.dtype))
            pooled_logits = word_head(pooled / count.clamp(min=1)[:, None].to(v.dtype)).float()
        parts = logits.split(AUX_CLASSES + (N_LETTERS,), dim=-1)
        aux_w = (1.0, args.aux_shape, 1.0)  # colour, shape, word
        aux = sum(aux_w[j] * _aux_ce(parts[j], cells[:, j], args.aux_fg) for j in range(len(AUX_CLASSES)))
        has_word = count > 0
        word_of = torch.zeros(n_img, dtype=torch.long, device=device).scatter_reduce(0, cell_image, cells[:, 2], "amax")
        word_target = (word_of - 1).clamp(min=0)
        letter_loss = _masked_mean_ce(parts[3], cells[:, 3], wf)
        pooled_loss = _masked_mean_ce(pooled_logits, word_target, has_word.float())
        loss = lm_loss + args.aux * aux
        if args.aux_word:
            loss = loss + args.aux_word * (letter_loss + pooled_loss)
        with torch.no_grad():
            lm = cells[:, 3] > 0
            stats += torch.stack([((parts[2].argmax(-1) == cells[:, 2]) & word_cell).sum(), word_cell.sum(),
                                  ((parts[3].argmax(-1) == cells[:, 3]) & lm).sum(), lm.sum(),
                                  ((pooled_logits.argmax(-1) == word_target) & has_word).sum(), has_word.sum(),
                                  *(x for j in (0, 1) for x in (((parts[j].argmax(-1) == cells[:, j])
                                                                 & (cells[:, j] > 0)).sum(), (cells[:, j] > 0).sum()))
                                  ]).float()
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for _, p in named], 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        if step % 50 == 0 or step <= 3 or args.steps and (step % args.log_every == 0 or step == args.steps):
            v = lm_loss.item()
            ema = v if ema is None else 0.9 * ema + 0.1 * v
            c = stats.tolist()
            acc = " ".join(f"{k} {c[2 * i] / max(1, c[2 * i + 1]):.3f}/{int(c[2 * i + 1])}"
                           for i, k in enumerate(("word-cell", "letter", "word-pooled", "colour-cell", "shape-cell")))
            log(f"step {step} loss {v:.4f} ema {ema:.4f} aux {aux.item():.3f} letter {letter_loss.item():.3f} "
                f"pooled {pooled_loss.item():.3f} lr {lr:.2e} t {time.time() - t0:.0f}s (waiting for data {waited:.0f}s)"
                f" | probe acc since last log: {acc}")
            stats.zero_()
        t_wait = time.time()
    train_s = time.time() - t0
    hook.remove()
    model.config._attn_implementation = "sdpa"  # the packed vision attention is for training only
    log(f"trained {step} steps × {args.batch} in {train_s:.0f} s ({step / max(train_s, 1e-9):.2f} steps/s)")
    return {"model": model, "processor": processor, "steps": step, "train_s": train_s, "n_params": n_params,
            "device": device, "round": round_}


def card(name: str, run: dict, result: dict | None, args) -> str:
    m = run["model"]
    cfg = m.config
    hw = torch.cuda.get_device_name(0) if run["device"] == "cuda" else platform.processor() or "CPU"
    if name == "qwen2-vl-synth":
        arch = (f"`Qwen2VLForConditionalGeneration`: Qwen2-VL vision transformer ({cfg.vision_config.depth} layers, "
                f"{cfg.vision_config.embed_dim} wide, 14 px patches, 2×2 merge, M-RoPE) and a Qwen2 decoder "
                f"({cfg.text_config.num_hidden_layers} layers, {cfg.text_config.hidden_size} wide, "
                f"{cfg.text_config.num_attention_heads} heads / {cfg.text_config.num_key_value_heads} kv heads). "
                "`Qwen2VLProcessor`, images at their own resolution (at most 448×448 px: up to 256 visual tokens), "
                "Qwen2-VL-Instruct's chat template (with its default system prompt).")
    else:
        arch = (f"`LlavaForConditionalGeneration` (LLaVA-1.5 layout): CLIP vision tower "
                f"({cfg.vision_config.num_hidden_layers} layers, {cfg.vision_config.hidden_size} wide, "
                f"{cfg.vision_config.image_size} px, 14 px patches: {cfg.image_seq_length} visual tokens, features of "
                f"the last layer), 2-layer GELU projector, Llama decoder ({cfg.text_config.num_hidden_layers} layers, "
                f"{cfg.text_config.hidden_size} wide, {cfg.text_config.num_attention_heads} heads / "
                f"{cfg.text_config.num_key_value_heads} kv heads). `LlavaProcessor` (images resized to a square "
                "without a centre crop), llava-1.5-hf's chat template (`USER: <image>\\n… ASSISTANT:`).")
    lines = [f"# {name}", "",
             "A small vision-language model trained from scratch on dashvl's synthetic visual-QA suite "
             "(`dashvl/synth.py`), bundled so that dashvl's demo, tests and accuracy comparisons work offline. "
             "It answers short questions about coloured shapes and words on textured backgrounds, and nothing else.",
             "", "## Architecture", "", arch, "",
             f"Parameters: {run['n_params'] / 1e6:.2f} M, stored in bfloat16. Tokenizer: a byte-level BPE "
             f"({len(run['processor'].tokenizer)} tokens) trained on the suite's language, with the real model's "
             "special tokens.", "",
             "## Data", "",
             "`dashvl.synth.make_split('train', ...)`: images 160–448 px a side, 1–6 shapes (circle, square, "
             "triangle, star in red, green, blue, yellow, purple, orange) and rendered words on noise / stripes / "
             "checker / gradient backgrounds with grey clutter. Mix per round of "
             f"{len(run['round'])}: " + ", ".join(f"{f} {run['round'].count(f)}" for f in synth.FAMILIES)
             + f"; each image is a {args.turns}-turn chat (its family's question, then "
             "others the scene settles). A third of the questions carry lmms-eval's post-prompt "
             "(\"Answer the question using a single word or phrase.\"), a third of existence questions MME's "
             "\" Please answer yes or no.\". Loss on the answer tokens and the end-of-turn tokens, plus "
             f"{args.aux} × an auxiliary loss (training only, not saved): a linear probe on the visual tokens "
             "predicts the colour, shape and word under each token's cell"
             + (f" (cells under an object or word weighted {args.aux_fg}× a background cell)" if args.aux_fg != 1
                else "")
             + (f"; plus {args.aux_word} × two reading losses: the letter under each word cell, and the word from "
                "the mean of its cells' visual tokens." if args.aux_word else "."), "",
             "## Training", "",
             "```", "python " + " ".join(sys.argv), "```", "",
             (f"Continued from `{args.init}`. " if args.init else ""),
             f"{run['steps']} steps of batch {args.batch} ({run['steps'] * args.batch:,} samples) in "
             f"{run['train_s'] / 60:.1f} min on one {hw} (shared with the other bundled model's run), AdamW "
             f"(lr {args.lr}, warm-up {args.warmup} steps, cosine over the time budget, weight decay 0.05), bf16 "
             f"autocast, torch {torch.__version__}, transformers {__import__('transformers').__version__}.", ""]
    lines += ["## Accuracy", ""]
    if result is None:
        lines += ["Not evaluated."]
    else:
        n = result["n"]
        lines += [f"Greedy generation on `make_split('test', ...)` ({n['existence']} questions per family), exact "
                  "match after lower-casing (bfloat16 weights, on the training machine):", "",
                  "| family | accuracy |", "| --- | --- |"]
        lines += [f"| {f} | {100 * a:.1f}% |" for f, a in result["accuracy"].items()]
        lines += ["", f"Mean: {100 * sum(result['accuracy'].values()) / len(synth.FAMILIES):.1f}%."]
    lines += ["", "## Use", "", "```python", "import dashvl", f"model, processor = dashvl.load_model({name!r})",
              "```", "", "or `AutoModelForImageTextToText.from_pretrained(path)` and `AutoProcessor.from_pretrained(path)`.",
              ""]
    return "\n".join(lines)


def save_and_pack(name: str, run: dict, result: dict | None, args, log=print) -> Path:
    folder = Path(args.out) / name
    if folder.exists():
        shutil.rmtree(folder)
    model = run["model"].to(torch.bfloat16).eval()
    model.save_pretrained(folder)
    run["processor"].save_pretrained(folder)
    (folder / "README.md").write_text(card(name, run, result, args))
    if result is not None:
        (folder / "eval_test.json").write_text(json.dumps(result, indent=1))
    size = (folder / "model.safetensors").stat().st_size
    log(f"saved {folder}: " + ", ".join(sorted(p.name for p in folder.iterdir())) + f"; weights {size / 2**20:.2f} MiB")
    if args.pack:
        shutil.copy(folder / "model.safetensors", Path(args.out) / f"{name}.safetensors")
        with tarfile.open(Path(args.out) / f"{name}.tar", "w") as tar:
            for p in sorted(folder.iterdir()):
                if p.name != "model.safetensors":
                    tar.add(p, arcname=f"{name}/{p.name}")
        shutil.rmtree(folder)
    return folder


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", choices=NAMES, required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--minutes", type=float, default=4.0, help="training wall-clock budget (ignored with --steps)")
    ap.add_argument("--steps", type=int, default=0)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=8e-4)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--workers", type=int, default=min(7, os.cpu_count() or 1))
    ap.add_argument("--turns", type=int, default=4, help="questions per training image (a multi-turn chat)")
    ap.add_argument("--aux", type=float, default=1.0, help="weight of the auxiliary loss on the visual tokens")
    ap.add_argument("--aux-fg", type=float, default=1.0,
                    help="weight of the auxiliary loss on cells under an object or word, relative to background")
    ap.add_argument("--aux-word", type=float, default=0.0,
                    help="weight of two more auxiliary losses for reading: the letter under each word cell (27-way, "
                         "on word cells) and the word from the mean of its cells' visual tokens (40-way)")
    ap.add_argument("--aux-shape", type=float, default=1.0,
                    help="weight of the shape part of the auxiliary loss, relative to the colour and word parts")
    ap.add_argument("--hard-no", type=float, default=0.0,
                    help="probability that a training No existence question shares the drawn object's colour (so "
                         "that only its shape tells it apart) instead of either attribute as the test split's do")
    ap.add_argument("--mix", default="",
                    help="families per round of the training stream, e.g. 'reading=8' or 'existence=2,...,reading=6' "
                         "(families left out keep ROUND's count: existence 2, colour 1, shape 1, count 2, "
                         "position 2, reading 2)")
    ap.add_argument("--no-fast", dest="fast", action="store_false",
                    help="Qwen2-VL: the stock per-image vision attention and per-row M-RoPE indices in the training "
                         "step (by default: one packed attention call per layer, indices computed by the data "
                         "workers; the same numbers)")
    ap.add_argument("--log-every", type=int, default=1, help="with --steps: log every this many steps")
    ap.add_argument("--init", help="start from this model folder instead of random weights")
    ap.add_argument("--eval-per-family", type=int, default=500)
    ap.add_argument("--tiny", action="store_true", help="toy sizes, for a CPU smoke test")
    ap.add_argument("--pack", action="store_true", help="also write OUT/<name>.safetensors and OUT/<name>.tar")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if not 0 <= args.hard_no <= 1:
        ap.error(f"--hard-no is a probability in [0, 1]; got {args.hard_no}")
    if args.aux_shape < 0:
        ap.error(f"--aux-shape is a loss weight >= 0; got {args.aux_shape}")
    Path(args.out).mkdir(parents=True, exist_ok=True)

    def log(msg):
        print(f"[{args.model}] {msg}", flush=True)

    run = train(args.model, args, log=log)
    save_and_pack(args.model, run, None, args, log=log)  # the weights first, in case evaluation runs out of time
    result, err = None, None
    if args.eval_per_family <= 0:
        return
    try:
        model = run["model"].to(torch.bfloat16) if run["device"] == "cuda" else run["model"]
        result = evaluate(model, run["processor"], args.eval_per_family, workers=args.workers,
                          device=run["device"], log=log)
    except Exception as e:  # keep the trained weights; the error is raised again below
        err = e
        log("evaluation failed:\n" + traceback.format_exc())
    save_and_pack(args.model, run, result, args, log=log)
    if err is not None:
        raise err


if __name__ == "__main__":
    main()
