"""``python -m apps.terminal_demo``: compress a VLM, generate, and print what DASH halted per layer.

Without ``--model`` it runs offline on the default model (``dashvl.models.DEFAULT_MODEL``: the bundled
trained Qwen2-VL when present, else a tiny random-weight Qwen2-VL whose answers are noise). ``--model``
takes a bundled name, a local folder or a hub id; ``--setting`` any dashvl setting, e.g.

    python -m apps.terminal_demo --setting method=downsample,ratio=0.75
    python -m apps.terminal_demo --setting method=fastv,layer=1 --ratio 0.75
"""
from __future__ import annotations

import argparse
import time

import torch

import dashvl
from dashvl.adapters import adapter_for
from dashvl.models import chat_prompt
from dashvl.setting import Setting

# the demo's own flags for these fields (the rest only through --setting), and its default ratio
FLAGS = ("ratio", "layer", "kv")
DEFAULT_RATIO = 0.5


def _load(args):
    from dashvl.models import DEFAULT_MODEL, TINY_RANDOM
    name = args.model or DEFAULT_MODEL
    model, processor = dashvl.load_model(name)
    if name in TINY_RANDOM:
        name += " (random weights: answers are noise, halting is real)"
    return model, processor, name


def _image(path):
    from PIL import UnidentifiedImageError
    if path is None:
        from dashvl.tiny import sample_image
        return sample_image(112, 84, seed=3)
    from dashvl.images import open_rgb
    try:
        return open_rgb(path)  # EXIF orientation, 16-bit scaled, transparency on white
    except FileNotFoundError:
        raise SystemExit(f"image not found: {path}")
    except UnidentifiedImageError:
        raise SystemExit(f"not an image file (PNG, JPEG, ... expected): {path}")


def _grid_text(mask: torch.Tensor) -> str:
    """'#' halted, '.' active, one text row per grid row (first frame)."""
    return "\n".join("    " + "".join("#" if v else "." for v in row) for row in mask[0].tolist())


def _setting(text: str) -> dict[str, str]:
    """--setting's pairs, checked as a whole here so that a bad one fails as an argparse error."""
    try:
        Setting.parse(text)
        return Setting.split(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def setting_of(args, parser) -> Setting:
    """--setting with --ratio / --layer / --kv on top (each field given one way); ratio DEFAULT_RATIO if neither."""
    given = {"ratio": DEFAULT_RATIO, **(args.setting or {})}
    for name in FLAGS:
        if hasattr(args, name):
            if name in (args.setting or {}):
                parser.error(f"{name} is given twice, by --{name} and by --setting: give it once")
            given[name] = getattr(args, name)
    try:
        return Setting.from_args(given)
    except ValueError as err:  # a combination, e.g. method=downsample with vision_ratio
        parser.error(str(err))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="bundled name, local folder or hub id (default: dashvl.models.DEFAULT_MODEL)")
    p.add_argument("--image", help="image file (default: a generated picture)")
    p.add_argument("--prompt", default="what colour is the square?")
    p.add_argument("--setting", type=_setting, default=None, help="a dashvl setting as key=value pairs "
                   f"separated by commas; the keys: {', '.join(Setting.fields())} (default: ratio={DEFAULT_RATIO})")
    for name in FLAGS:
        p.add_argument(f"--{name}", type=Setting.cli_type(name), default=argparse.SUPPRESS,
                       help=Setting.describe(name) + (f" (default: {DEFAULT_RATIO})" if name == "ratio" else ""))
    p.add_argument("--max-new-tokens", type=int, default=12)
    return p


def main(argv=None):
    p = build_parser()
    args = p.parse_args(argv)
    if not args.prompt.strip():
        raise SystemExit("the prompt is empty: pass --prompt 'a question about the image'")
    setting = setting_of(args, p)  # validated before loading

    model, processor, name = _load(args)
    try:  # the checks that need the model, before any generation
        adapter = adapter_for(model)
        blocks = len(adapter.vision_spec(model).blocks) if setting.vision_ratio else None
        setting.check(len(adapter.decoder_layers(model)), blocks)
    except ValueError as err:
        raise SystemExit(f"setting {setting} does not fit {name}: {err}")
    text, image = chat_prompt(processor, args.prompt), _image(args.image)
    if getattr(processor.image_processor, "merge_size", None):  # Qwen-VL: sized as qwen_vl_utils sizes it
        from dashvl.images import for_qwen
        image = for_qwen(image, processor.image_processor)

    def encode(process):
        return process(text=[text], images=[image], return_tensors="pt").to(model.device)

    def run(inputs):
        start = time.perf_counter()
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=args.max_new_tokens, do_sample=False)
        T = inputs["input_ids"].shape[1]
        return processor.batch_decode(out[:, T:], skip_special_tokens=True)[0], time.perf_counter() - start

    inputs = encode(processor)
    print(f"model: {name}\nprompt: {args.prompt!r} ({inputs['input_ids'].shape[1]} tokens)\nsetting: {setting}\n")
    plain, t_plain = run(inputs)
    # trace=True: a trace even where nothing halts inside the model (downsample shrinks the images instead)
    with dashvl.apply(model, processor, setting, trace=True) as applied:
        if setting.stage == "inputs":
            inputs = encode(applied.processor)
        halted_answer, t_dash = run(inputs)
        trace = applied.trace
    T = inputs["input_ids"].shape[1]
    print(f"unmodified : {plain!r}  ({t_plain * 1000:.0f} ms)")
    print(f"{setting.label:<11}: {halted_answer!r}  ({t_dash * 1000:.0f} ms, {T} prompt tokens)  {applied.handle!r}\n")
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
