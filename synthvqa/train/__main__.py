"""Train the two bundled models, ``qwen2-vl-synth`` and ``llava-synth``, from scratch on ``synthvqa.suite``.

Builds a small ``Qwen2VLForConditionalGeneration`` (+ ``Qwen2VLProcessor``) or ``LlavaForConditionalGeneration``
(CLIP vision tower, Llama text model, + ``LlavaProcessor``) with a byte-level BPE tokenizer trained here on the
suite's language and the real models' chat templates; trains it on the ``train`` split (each image a multi-turn
chat, loss on the answers, plus an auxiliary per-visual-token loss that is not saved; bf16 autocast, AdamW, a
cosine schedule over a wall-clock budget or a step count); saves it in bfloat16 with ``save_pretrained``;
evaluates greedy generations on the ``test`` split per family; writes a model card.

    # what made assets/models/ (one H200, both models at once; see each model card):
    #   stage 1 (an earlier recipe: one question per image, no auxiliary loss), 4.5 min:
    python -m synthvqa.train --model qwen2-vl-synth --minutes 4.5 --batch 96 --lr 1e-3 --turns 1 --aux 0 --out OUT --pack &
    #   stage 2, 1.2 min:
    python -m synthvqa.train --model qwen2-vl-synth --init assets/models/qwen2-vl-synth --minutes 1.2 --batch 64 \
        --lr 1e-3 --warmup 50 --eval-per-family 200 --out OUT --pack &
    #   stage 3, 7.3 min (the auxiliary loss weighted towards the cells under objects and words):
    python -m synthvqa.train --model qwen2-vl-synth --init assets/models/qwen2-vl-synth --minutes 7.3 --batch 64 \
        --lr 1e-3 --warmup 50 --aux-fg 4 --workers 7 --out OUT --pack &
    # (the same for llava-synth).
    #   stages 4 and 5 (two reading losses on the visual tokens, a per-model mix of families), 7.8 and 6.4 min:
    bash synthvqa/train/run_gpu.sh 7.8 reading=4 reading=4
    bash synthvqa/train/run_gpu.sh 6.4 position=4 existence=3,colour=3,reading=3 6e-4
    #   stage 6 (llava-synth: No questions that share the drawn colour; two variants side by side, A kept), 7.8 min:
    bash synthvqa/train/run_gpu_variants.sh 7.8 "A:--lr 8e-4 --mix existence=5,colour=4 --hard-no 0.7" \
        "B:--lr 1e-3 --mix existence=5,colour=4 --hard-no 0.85 --aux-shape 3"
    # a CPU smoke test:
    python -m synthvqa.train --model qwen2-vl-synth --steps 3 --batch 4 --tiny --eval-per-family 4 --out /tmp/s

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
(``python -m synthvqa.reports.existence_errors``: Yes to 98 of 99 test No questions whose colour was drawn, No to all 101 whose colour
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
import os
import traceback
from pathlib import Path

import torch

from ..evaluate import evaluate
from .architectures import NAMES
from .card import save_and_pack
from .loop import train
from .smol import COMPOSED_NAMES, save_composed, text_check


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
    ap.add_argument("--vision-init", help="composed models: a safetensors file with the toy's vision tower "
                    "(default: the bundled toy's model.safetensors)")
    ap.add_argument("--text-every", type=int, default=0, help="composed models: every N-th training item is a "
                    "plain text chat answered as the pretrained LM answers it (0: none)")
    ap.add_argument("--text-questions", type=int, default=240, help="composed models: how many text prompts")
    ap.add_argument("--lora-rank", type=int, default=8, help="composed models: rank of the LM's LoRA updates "
                    "(0: the LM frozen, only the vision side trains)")
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
    composed = args.model in COMPOSED_NAMES
    save = save_composed if composed else save_and_pack
    if composed:
        run["text_check"] = text_check(run["model"], run["processor"], run["device"], log)
    save(args.model, run, None, args, log=log)  # the weights first, in case evaluation runs out of time
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
    save(args.model, run, result, args, log=log)
    if err is not None:
        raise err


if __name__ == "__main__":
    main()
