"""Prefill speed at real model shapes: unmodified vs DASH, next to the FLOPs limit.

One call builds the model (random bf16 weights: speed does not depend on their values), checks it
(ratio 0 bitwise; kv="drop" runs on SDPA's flash kernel alone) and times every setting, round-robin,
median of --reps after warm-up, with CUDA events. Run through the device tool, e.g.

    python -m bench.gpu_prefill --model qwen2-vl-7b --mode llm --tokens 1088,4160,16448
    python -m bench.gpu_prefill --model qwen2-vl-7b --mode e2e --tokens 1024,4096,16384

--mode llm: text tokens only, the language model's prefill (batch 1, DynamicCache, logits_to_keep=1 as
  generate() runs it). Also times Δ scoring + selection alone against the prefill.
--mode e2e: images with about --tokens visual tokens through the real vision tower (Qwen2-VL: one image
  per 4,096 tokens at most; LLaVA-1.5: 576 tokens per 336 px image). Times the vision tower alone, the
  LLM on the tower's outputs, and the whole prefill (time to first token); the end-to-end limit is
  Amdahl's: (vision + LLM) / (vision + LLM / LLM limit).
"""
from __future__ import annotations

import argparse
import json
import os

import torch

import dashvl
from bench.common import Variant, _timed, markdown, model_args, setup, time_settings, visual_inputs
from dashvl import policy
from dashvl.setting import Setting, method_names


def main(argv=None, **defaults):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    model_args(p)
    p.add_argument("--tokens", default="1088,2112,4160,16448")
    p.add_argument("--ratios", default="0,0.5,0.75,0.9")
    p.add_argument("--layers", default="2", help="comma list; a float is a fraction of the depth")
    p.add_argument("--kv", default="drop,keep")
    p.add_argument("--methods", default="dash", help=f"comma list of {', '.join(method_names('llm'))}")
    p.add_argument("--vision-ratios", default="", help="e2e: comma list of vision_ratio values (vision tower "
                   "alone, and with the LLM at the same ratio)")
    p.add_argument("--vision-layer", default="0.25", help="vision block v_s (int, or float fraction)")
    p.add_argument("--downsample", default="", help="e2e, Qwen2-VL: comma list of ratios for the downsampling "
                   "baseline (images giving (1 - ratio) of the visual tokens), timed next to the settings")
    p.add_argument("--graph", default="auto", help="comma list of auto (the default: the halted layers replay "
                   "a CUDA graph where they can) and off (cuda_graph=False: the layers run one by one)")
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--out", default=os.environ.get("OUT", "/tmp"))
    p.add_argument("--tag", default="", help="added to the result file's name")
    p.set_defaults(**defaults)
    args = p.parse_args(argv)

    model, cuda, info = setup(args, "bench.gpu_prefill", argv)
    try:  # each value checked by Setting, with its message
        methods, ratios, layers, kvs, vision_ratios = (
            [Setting.parse_value(name, x) for x in text.split(",") if x.strip()] for name, text in (
                ("method", args.methods), ("ratio", args.ratios), ("layer", args.layers), ("kv", args.kv),
                ("vision_ratio", args.vision_ratios)))
        vision_layer = Setting.parse_value("vision_layer", args.vision_layer)
        settings = [Setting(method=m, ratio=r, layer=l, kv=kv, scope="all") for m in methods for l in layers
                    for kv in kvs for r in ratios if not (r == 0 and (kv == "keep" or m != "dash"))]
    except ValueError as err:
        p.error(str(err))
    if any(s.stage != "llm" for s in settings):
        p.error(f"--methods takes {', '.join(method_names('llm'))} (--downsample times the downsampling baseline)")
    graph_modes = args.graph.split(",")
    if set(graph_modes) - {"auto", "off"}:
        p.error(f"--graph takes auto and/or off; got {args.graph!r}")
    settings = [Variant(s, cuda_graph=False) if mode == "off" else Variant(s)
                for s in settings for mode in graph_modes if mode == "auto" or (s.ratio > 0 and s.kv == "drop")]
    for vr in vision_ratios:
        settings.append(Variant(Setting(ratio=0.0, vision_ratio=vr, vision_layer=vision_layer)))
        settings.append(Variant(Setting(ratio=vr, layer=layers[0], kv="drop", vision_ratio=vr,
                                        vision_layer=vision_layer)))
    results = []
    for T in [int(t) for t in args.tokens.split(",")]:
        torch.manual_seed(T)
        if args.mode == "llm":
            vocab = model.config.get_text_config().vocab_size
            inputs = dict(input_ids=torch.randint(0, min(vocab, 150000), (1, T), device=args.device))
        else:
            inputs = visual_inputs(model, T, args.device)
        checks = check(model, inputs)
        n = inputs["input_ids"].shape[1]
        entry = dict(tokens=n, checks=checks)
        if args.mode == "llm":
            prefill = lambda: model(**inputs, use_cache=True, logits_to_keep=1)  # noqa: E731
            rows = entry["rows"] = time_settings(model, lambda: prefill, settings, args.reps, args.warmup, cuda=cuda)
            entry["select_ms"] = selection_ms(model, n, args.device, cuda, args.reps)
            extra = f"Δ scoring + selection alone: {entry['select_ms']:.3f} ms " \
                    f"({100 * entry['select_ms'] / rows[0]['ms']:.2f}% of the unmodified prefill)"
        else:
            entry.update(e2e_split(model, inputs, settings, args, cuda))
            extra = f"vision tower alone: {entry['vision_ms']:.2f} ms"
            rows = ([dict(r, setting="vision " + r["setting"]) for r in entry["vision_rows"]] + entry["llm_rows"]
                    + [dict(r, setting="TTFT " + r["setting"]) for r in entry["e2e_rows"]])
        print(f"\n## {args.model}, {args.mode}, {n} tokens, {args.attn}; checks: {checks}; {extra}\n\n"
              f"{markdown(rows, ['peak_gib'] if cuda else [])}", flush=True)
        results.append(entry)
    name = f"prefill_{args.model}_{args.mode}_{args.device.split(':')[0]}_{args.attn}{args.tag}.json"
    with open(os.path.join(args.out, name), "w") as f:
        json.dump(dict(info=info, results=results), f, indent=1)


def e2e_split(model, inputs, settings, args, cuda) -> dict:
    """Vision tower alone, LLM on the unmodified tower's outputs, whole prefill: per setting. The whole
    prefill's limit is Amdahl's over the measured unmodified parts and each part's FLOPs limit."""
    visual_kwargs = {k: inputs[k] for k in ("pixel_values", "image_grid_thw") if k in inputs}
    vision = lambda: model.model.get_image_features(**visual_kwargs)  # noqa: E731
    vision_rows = time_settings(model, lambda: vision, settings, args.reps, args.warmup, cuda=cuda)
    with torch.no_grad():
        encoded = {"image": vision()}
    llm_inputs = {k: v for k, v in inputs.items() if k not in ("pixel_values",)}
    llm = lambda: model(**llm_inputs, mm_encoder_outputs=encoded, use_cache=True, logits_to_keep=1)  # noqa: E731
    llm_rows = time_settings(model, lambda: llm, settings, args.reps, args.warmup, cuda=cuda)
    e2e_rows = time_settings(model, lambda: (lambda: model(**inputs, use_cache=True, logits_to_keep=1)),
                             settings, args.reps, args.warmup, cuda=cuda)
    V, L = vision_rows[0]["ms"], llm_rows[0]["ms"]
    for v_row, llm_row, e2e_row in zip(vision_rows, llm_rows, e2e_rows):
        v_row["limit"] = e2e_row["vision_limit"]
        e2e_row["limit"] = (V + L) / (V / e2e_row["vision_limit"] + L / llm_row["limit"])
    for r in [float(x) for x in args.downsample.split(",") if x]:
        # the pre-LLM baseline: a smaller image grid, the unmodified model (no compress)
        n = inputs["input_ids"].shape[1]
        small = visual_inputs(model, max(4, round(sum((inputs["input_ids"] == model.config.image_token_id)[0].tolist())
                                                  * (1 - r))), inputs["input_ids"].device)
        row = time_settings(model, lambda: (lambda: model(**small, use_cache=True, logits_to_keep=1)), [],
                            args.reps, args.warmup, cuda=cuda)[0]
        e2e_rows.append(dict(row, setting=f"downsample={r} ({small['input_ids'].shape[1]} of {n} tokens)",
                             speedup=e2e_rows[0]["ms"] / row["ms"], limit=float("nan")))
    return dict(vision_ms=V, vision_rows=vision_rows, llm_rows=llm_rows, e2e_rows=e2e_rows)


@torch.no_grad()
def selection_ms(model, T, device, cuda, reps) -> float:
    """Δ scoring, selection and gather indices for one prefill, timed alone (ratio 0.75, batch 1)."""
    d = model.config.get_text_config().hidden_size
    dtype = next(model.parameters()).dtype
    update = torch.randn(1, T, d, device=device, dtype=dtype)
    eligible = torch.ones(1, T, dtype=torch.bool, device=device)
    eligible[:, -1] = False
    n_halt = torch.tensor([int(0.75 * (T - 1))], device=device)

    def run():
        halted = policy.select_halted(policy.delta_scores(update), eligible, n_halt)
        policy.compact_index(~halted, T - int(n_halt[0]))

    for _ in range(3):
        run()
    return sorted(_timed(run, cuda)[0] for _ in range(reps))[reps // 2]


@torch.no_grad()
def check(model, inputs) -> dict:
    """ratio 0 is bitwise the unmodified model; kv="drop" runs on SDPA's flash kernel alone."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    ref = model(**inputs, logits_to_keep=1).logits
    with dashvl.compress(model, method="dash", ratio=0.0, layer=2):
        same = torch.equal(model(**inputs, logits_to_keep=1).logits, ref)
    out = {"ratio0_bitwise": same}
    if model.config.get_text_config()._attn_implementation == "sdpa" and ref.is_cuda:
        llm_only = {k: v for k, v in inputs.items() if k not in ("pixel_values",)}
        if "pixel_values" in inputs:  # the vision tower's own attention is not the subject here
            llm_only["mm_encoder_outputs"] = {"image": model.model.get_image_features(
                **{k: inputs[k] for k in ("pixel_values", "image_grid_thw") if k in inputs})}
        with dashvl.compress(model, method="dash", ratio=0.75, layer=2, kv="drop"), sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
            logits = model(**llm_only, use_cache=True, logits_to_keep=1).logits
        out["drop_on_flash_kernel"] = bool(torch.isfinite(logits).all())
    if ref.is_cuda:  # the captured graph computes what the layers compute one by one
        graphed = {}
        for mode in (None, False):
            with dashvl.compress(model, method="dash", ratio=0.75, layer=2, cuda_graph=mode) as h:
                for _ in range(2):  # capture, then replay
                    graphed[mode] = model(**inputs, use_cache=True, logits_to_keep=1).logits.float()
                if mode is None:
                    captures = h._graphs.captures
        diff = (graphed[None] - graphed[False]).abs().max().item()
        out["graph_vs_eager"] = dict(captures=captures, max_abs_logit_diff=round(diff, 4),
                                     same_argmax=bool(torch.equal(graphed[None].argmax(-1), graphed[False].argmax(-1))))
    return out


if __name__ == "__main__":
    main()
