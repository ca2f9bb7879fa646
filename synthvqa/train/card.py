"""A trained model's folder: weights, processor, model card and test accuracy; packed for the device's file limits."""
from __future__ import annotations

import json
import platform
import shutil
import sys
import tarfile
from pathlib import Path

import torch

from .. import suite as synth

__all__ = ["card", "save_and_pack"]

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
             "(`synthvqa/suite.py`), bundled so that dashvl's demo, tests and accuracy comparisons work offline. "
             "It answers short questions about coloured shapes and words on textured backgrounds, and nothing else.",
             "", "## Architecture", "", arch, "",
             f"Parameters: {run['n_params'] / 1e6:.2f} M, stored in bfloat16. Tokenizer: a byte-level BPE "
             f"({len(run['processor'].tokenizer)} tokens) trained on the suite's language, with the real model's "
             "special tokens.", "",
             "## Data", "",
             "`synthvqa.suite.make_split('train', ...)`: images 160–448 px a side, 1–6 shapes (circle, square, "
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
