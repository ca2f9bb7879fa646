"""Shared by the benchmarks: random-weight models at given shapes, timing, result tables."""
from __future__ import annotations

import statistics
import time

import torch

import dashvl
from dashvl.flops import flops_speedup

# Real models' text backbones (speed does not depend on the weights' values).
SHAPES = {
    "qwen2-vl-7b": dict(family="qwen2_vl", num_hidden_layers=28, hidden_size=3584, num_attention_heads=28,
                        num_key_value_heads=4, intermediate_size=18944, vocab_size=152064),
    "llava-1.5-7b": dict(family="llava", num_hidden_layers=32, hidden_size=4096, num_attention_heads=32,
                         num_key_value_heads=32, intermediate_size=11008, vocab_size=32064),
    # the CPU benchmark's mid-size model
    "qwen2-vl-mid": dict(family="qwen2_vl", num_hidden_layers=8, hidden_size=512, num_attention_heads=8,
                         num_key_value_heads=2, intermediate_size=1408, vocab_size=8192),
}


def build_model(name: str, device: str, dtype, attn: str = "sdpa", vision: bool = True):
    """A random-weight model at ``SHAPES[name]`` with the real transformers class."""
    shape = dict(SHAPES[name])
    family = shape.pop("family")
    if family == "qwen2_vl":
        from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration
        head_dim = shape["hidden_size"] // shape["num_attention_heads"]
        half = head_dim // 2
        section = [half - 2 * (3 * half // 8), 3 * half // 8, 3 * half // 8]  # 7B: [16, 24, 24]
        text = dict(shape, max_position_embeddings=32768, bos_token_id=0, eos_token_id=1,
                    rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": section})
        vision_cfg = dict(depth=32, embed_dim=1280, hidden_size=shape["hidden_size"], num_heads=16) if vision \
            else dict(depth=1, embed_dim=64, hidden_size=shape["hidden_size"], num_heads=2)
        config = Qwen2VLConfig(text_config=text, vision_config=vision_cfg, image_token_id=151655,
                               video_token_id=151656, vision_start_token_id=151652, vision_end_token_id=151653)
        cls = Qwen2VLForConditionalGeneration
    else:
        from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration
        vision_cfg = CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                                      num_attention_heads=16, image_size=336, patch_size=14, projection_dim=768)
        llama = LlamaConfig(**shape, max_position_embeddings=32768, bos_token_id=1, eos_token_id=2)
        config = LlavaConfig(vision_config=vision_cfg, text_config=llama,
                             image_token_index=32000, vision_feature_layer=-2)
        cls = LlavaForConditionalGeneration
    config._attn_implementation = attn
    with torch.device(device):
        model = cls._from_config(config, dtype=dtype)
    return model.eval()


def text_config(model):
    return model.config.get_text_config(decoder=True)


def median_ms(fn, reps: int, warmup: int, cuda: bool) -> tuple[float, float]:
    """Median time of ``fn()`` in ms (CUDA events on the GPU), and the median host time to issue it.

    On the GPU a host time close to the device time means the prefill is bound by Python / launches.
    """
    for _ in range(warmup):
        fn()
    times, host = [], []
    for _ in range(reps):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize()
            start.record()
            t0 = time.perf_counter()
            fn()
            host.append((time.perf_counter() - t0) * 1000)
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1000)
            host.append(times[-1])
    return statistics.median(times), statistics.median(host)


def time_settings(model, make_call, settings, reps, warmup, cuda):
    """Time the unmodified model and each DASH setting; returns rows of dicts.

    ``make_call()`` returns a no-arg function running one prefill. ``settings``: dicts for compress().
    """
    rows = []
    call = make_call()
    with torch.no_grad():
        if cuda:  # let the clocks ramp up before the first timed setting
            t0 = time.perf_counter()
            while time.perf_counter() - t0 < 3:
                call()
            torch.cuda.synchronize()
        base, host = median_ms(call, reps, warmup, cuda)
        rows.append(dict(setting="unmodified", ms=base, host_ms=host, speedup=1.0, limit=1.0))
        for s in settings:
            with dashvl.compress(model, **s) as handle:
                ms, host = median_ms(call, reps, warmup, cuda)
                limit = flops_speedup(text_config(model), handle.trace)
            rows.append(dict(setting=" ".join(f"{k}={v}" for k, v in s.items()), ms=ms, host_ms=host,
                             speedup=base / ms, limit=limit))
        again, host = median_ms(call, reps, warmup, cuda)
        rows.append(dict(setting="unmodified (again)", ms=again, host_ms=host, speedup=base / again, limit=1.0))
    return rows


def markdown(rows, extra_cols=()) -> str:
    cols = ["setting", "ms", "host_ms", "speedup", "limit", "realised"] + list(extra_cols)
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        r = dict(r, realised=r["speedup"] / r["limit"])  # fraction of the FLOPs-limit speedup reached
        cells = []
        for c in cols:
            v = r.get(c, "")
            cells.append(f"{v:.2f}" if isinstance(v, float) else str(v))
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)
