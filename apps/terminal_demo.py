"""``python -m apps.terminal_demo``: compress a VLM, generate, and print what DASH halted per layer.

Without ``--model`` it runs offline on the default model (``dashvl.models.DEFAULT_MODEL``: the bundled
trained Qwen2-VL when present, else a tiny random-weight Qwen2-VL whose answers are noise). ``--model``
takes a bundled name, a local folder or a hub id.
"""
from __future__ import annotations

import argparse
import time

import torch

import dashvl
from dashvl.models import chat_prompt


def _load(args):
    from dashvl.models import DEFAULT_MODEL, TINY_RANDOM
    name = args.model or DEFAULT_MODEL
    model, processor = dashvl.load_model(name)
    if name in TINY_RANDOM:
        name += " (random weights: answers are noise, halting is real)"
    return model, processor, name


def _image(path):
    from PIL import Image, UnidentifiedImageError
    if path is None:
        from dashvl.tiny import sample_image
        return sample_image(112, 84, seed=3)
    try:
        return Image.open(path).convert("RGB")
    except FileNotFoundError:
        raise SystemExit(f"image not found: {path}")
    except UnidentifiedImageError:
        raise SystemExit(f"not an image file (PNG, JPEG, ... expected): {path}")


def _grid_text(mask: torch.Tensor) -> str:
    """'#' halted, '.' active, one text row per grid row (first frame)."""
    return "\n".join("    " + "".join("#" if v else "." for v in row) for row in mask[0].tolist())


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="bundled name, local folder or hub id (default: dashvl.models.DEFAULT_MODEL)")
    p.add_argument("--image", help="image file (default: a generated picture)")
    p.add_argument("--prompt", default="what colour is the square?")
    p.add_argument("--ratio", type=float, default=0.5)
    p.add_argument("--layer", type=float, default=2)
    p.add_argument("--kv", default="drop", choices=["drop", "keep"])
    p.add_argument("--max-new-tokens", type=int, default=12)
    args = p.parse_args(argv)
    if not args.prompt.strip():
        raise SystemExit("the prompt is empty: pass --prompt 'a question about the image'")
    layer = int(args.layer) if float(args.layer).is_integer() else args.layer
    config = dashvl.DashConfig(ratio=args.ratio, layer=layer, kv=args.kv)  # validates before loading

    model, processor, name = _load(args)
    text = chat_prompt(processor, args.prompt)
    inputs = processor(text=[text], images=[_image(args.image)], return_tensors="pt").to(model.device)
    T = inputs["input_ids"].shape[1]

    def run():
        start = time.perf_counter()
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=args.max_new_tokens, do_sample=False)
        return processor.batch_decode(out[:, T:], skip_special_tokens=True)[0], time.perf_counter() - start

    print(f"model: {name}\nprompt: {args.prompt!r} ({T} tokens)\n")
    plain, t_plain = run()
    with dashvl.compress(model, config) as handle:
        halted_answer, t_dash = run()
        trace = handle.trace
    print(f"unmodified : {plain!r}  ({t_plain * 1000:.0f} ms)")
    print(f"DASH       : {halted_answer!r}  ({t_dash * 1000:.0f} ms)  {handle!r}\n")
    print("tokens processed per layer:")
    for i, n in enumerate(trace.tokens_per_layer[0].tolist()):
        print(f"  layer {i:2d}: {n:5d} {'#' * max(1, round(40 * n / T))}")
    for kind in ("text", "image"):
        total = int((trace.kinds[0] == trace.kind_names.index(kind)).sum())
        print(f"{kind} tokens halted: {int(trace.num_halted(kind)[0])} of {total}")
    for span in trace.spans:
        print(f"\nimage {span.index}, grid {span.grid[1]}x{span.grid[2]} ('#' = halted above layer {trace.layer}):")
        print(_grid_text(trace.patch_mask(image=span.index)))


if __name__ == "__main__":
    main()
