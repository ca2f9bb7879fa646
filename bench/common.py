"""Shared by the benchmarks: random-weight models at given shapes, timing, result tables."""
from __future__ import annotations

import dataclasses
import platform
import statistics
import sys
import time

import torch

from dashvl.flops import flops_speedup, vision_flops
from dashvl.setting import Setting, apply

# Real models' text backbones (speed does not depend on the weights' values).
SHAPES = {
    "qwen2-vl-7b": dict(family="qwen2_vl", num_hidden_layers=28, hidden_size=3584, num_attention_heads=28,
                        num_key_value_heads=4, intermediate_size=18944, vocab_size=152064),
    "llava-1.5-7b": dict(family="llava", num_hidden_layers=32, hidden_size=4096, num_attention_heads=32,
                         num_key_value_heads=32, intermediate_size=11008, vocab_size=32064),
    # Qwen3-VL-8B-Instruct's text model (interleaved M-RoPE [24, 20, 20], theta 5e6; DeepStack into layers 0-2)
    "qwen3-vl-8b": dict(family="qwen3_vl", num_hidden_layers=36, hidden_size=4096, num_attention_heads=32,
                        num_key_value_heads=8, head_dim=128, intermediate_size=12288, vocab_size=151936),
    # LLaVA-OneVision-Qwen2-7B: Qwen2-7B under a SigLIP-so400m tower, anyres_max_9
    "llava-onevision-7b": dict(family="llava_onevision", num_hidden_layers=28, hidden_size=3584,
                               num_attention_heads=28, num_key_value_heads=4, intermediate_size=18944,
                               vocab_size=152128),
    # the CPU benchmark's mid-size models (small vision towers)
    "qwen2-vl-mid": dict(family="qwen2_vl", num_hidden_layers=8, hidden_size=512, num_attention_heads=8,
                         num_key_value_heads=2, intermediate_size=1408, vocab_size=8192),
    # the GPU checks of real kernels (tests/gpu/test_flash4.py): few layers, the 7B models' head_dim 128
    "qwen2-vl-check": dict(family="qwen2_vl", num_hidden_layers=6, hidden_size=1024, num_attention_heads=8,
                           num_key_value_heads=2, intermediate_size=2816, vocab_size=8192),
    "llava-check": dict(family="llava", num_hidden_layers=6, hidden_size=1024, num_attention_heads=8,
                        num_key_value_heads=8, intermediate_size=2816, vocab_size=8192),
    # almost no arithmetic: a decode step is host time, so a paired run reads dashvl's own per-step cost in µs
    "qwen2-vl-tiny": dict(family="qwen2_vl", num_hidden_layers=4, hidden_size=64, num_attention_heads=2,
                          num_key_value_heads=1, intermediate_size=128, vocab_size=1024),
    "llava-mid": dict(family="llava", num_hidden_layers=8, hidden_size=512, num_attention_heads=8,
                      num_key_value_heads=8, intermediate_size=1408, vocab_size=8192),
}
REAL_VISION = ("qwen2-vl-7b", "llava-1.5-7b", "qwen3-vl-8b", "llava-onevision-7b")


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
        vision_cfg = dict(depth=32, embed_dim=1280, hidden_size=shape["hidden_size"], num_heads=16) \
            if vision and name in REAL_VISION else dict(depth=2, embed_dim=64, hidden_size=shape["hidden_size"], num_heads=2)
        v = shape["vocab_size"]  # special ids at the end of the vocabulary, whatever its size
        config = Qwen2VLConfig(text_config=text, vision_config=vision_cfg, image_token_id=v - 2,
                               video_token_id=v - 1, vision_start_token_id=v - 4, vision_end_token_id=v - 3)
        cls = Qwen2VLForConditionalGeneration
    elif family == "qwen3_vl":
        from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration
        text = dict(shape, max_position_embeddings=262144, bos_token_id=0, eos_token_id=1,
                    rope_parameters={"rope_type": "default", "rope_theta": 5e6, "mrope_section": [24, 20, 20],
                                     "mrope_interleaved": True})
        big = vision and name in REAL_VISION
        vision_cfg = dict(depth=27 if big else 3, hidden_size=1152 if big else 64, intermediate_size=4304 if big else 128,
                          num_heads=16 if big else 2, out_hidden_size=shape["hidden_size"], patch_size=16,
                          spatial_merge_size=2, temporal_patch_size=2, num_position_embeddings=2304,
                          deepstack_visual_indexes=[8, 16, 24] if big else [0, 1, 2])
        v = shape["vocab_size"]
        config = Qwen3VLConfig(text_config=text, vision_config=vision_cfg, image_token_id=v - 2, video_token_id=v - 1,
                               vision_start_token_id=v - 4, vision_end_token_id=v - 3, tie_word_embeddings=False)
        cls = Qwen3VLForConditionalGeneration
    elif family == "llava_onevision":
        from transformers import LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration, SiglipVisionConfig
        from transformers.models.auto import CONFIG_MAPPING
        big = vision and name in REAL_VISION
        text = CONFIG_MAPPING["qwen2"](**shape, max_position_embeddings=32768, rope_theta=1e6, bos_token_id=0,
                                       eos_token_id=1, tie_word_embeddings=False)
        siglip = SiglipVisionConfig(hidden_size=1152 if big else 64, intermediate_size=4304 if big else 128,
                                    num_hidden_layers=26 if big else 2, num_attention_heads=16 if big else 2,
                                    image_size=384, patch_size=14)
        pinpoints = [[384 * i, 384 * j] for i in range(1, 7) for j in range(1, 7)]  # the 7B's 6x6 grid
        config = LlavaOnevisionConfig(vision_config=siglip, text_config=text, image_token_index=shape["vocab_size"] - 2,
                                      video_token_index=shape["vocab_size"] - 1, vision_feature_select_strategy="full",
                                      vision_feature_layer=-1, image_grid_pinpoints=pinpoints,
                                      vision_aspect_ratio="anyres_max_9", tie_word_embeddings=False)
        cls = LlavaOnevisionForConditionalGeneration
    else:
        from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration
        big = vision and name in REAL_VISION
        vision_cfg = CLIPVisionConfig(hidden_size=1024 if big else 64, intermediate_size=4096 if big else 128,
                                      num_hidden_layers=24 if big else 2, num_attention_heads=16 if big else 2,
                                      image_size=336, patch_size=14, projection_dim=768)
        llama = LlamaConfig(**shape, max_position_embeddings=32768, bos_token_id=1, eos_token_id=2)
        config = LlavaConfig(vision_config=vision_cfg, text_config=llama,
                             image_token_index=shape["vocab_size"] - 1, vision_feature_layer=-2)
        cls = LlavaForConditionalGeneration
    config._attn_implementation = attn
    with torch.device(device):
        model = cls._from_config(config, dtype=dtype)
    return model.eval()


def visual_inputs(model, tokens: int, device) -> dict:
    """Model inputs with about ``tokens`` visual tokens (random pixels) between two short text spans."""
    import math
    cfg = model.config
    prefix = torch.randint(10, 1000, (12,))
    suffix = torch.randint(10, 1000, (12,))
    if cfg.model_type == "llava_onevision":
        raise ValueError("visual_inputs builds Qwen2-VL / Qwen3-VL and LLaVA-1.5 image prompts; for "
                         "llava-onevision-7b time text prompts (--mode llm)")
    if cfg.model_type in ("qwen2_vl", "qwen3_vl"):
        n_img = math.ceil(tokens / 4096)
        side = round(math.sqrt(tokens / n_img))           # merged tokens per side
        patch = cfg.vision_config.temporal_patch_size * cfg.vision_config.patch_size ** 2 * 3
        parts, thw = [prefix], []
        for _ in range(n_img):
            parts.append(torch.tensor([cfg.vision_start_token_id] + [cfg.image_token_id] * side * side
                                      + [cfg.vision_end_token_id]))
            thw.append([1, 2 * side, 2 * side])
        parts.append(suffix)
        ids = torch.cat(parts)[None]
        n_patches = sum(t * h * w for t, h, w in thw)
        return dict(input_ids=ids.to(device), mm_token_type_ids=(ids == cfg.image_token_id).long().to(device),
                    image_grid_thw=torch.tensor(thw, device=device),
                    pixel_values=torch.randn(n_patches, patch, device=device, dtype=model.dtype))
    side = cfg.vision_config.image_size // cfg.vision_config.patch_size
    n_img = max(1, round(tokens / (side * side)))
    parts = [prefix]
    for _ in range(n_img):
        parts += [torch.full((side * side,), cfg.image_token_id), torch.randint(10, 1000, (2,))]
    parts.append(suffix)
    size = cfg.vision_config.image_size
    return dict(input_ids=torch.cat(parts)[None].to(device),
                pixel_values=torch.randn(n_img, 3, size, size, device=device, dtype=model.dtype))


def text_config(model):
    return model.config.get_text_config(decoder=True)


def _timed(fn, cuda: bool) -> tuple[float, float]:
    """(device ms, host ms to issue) of one call of ``fn``; equal on the CPU."""
    if not cuda:
        t0 = time.perf_counter()
        fn()
        ms = (time.perf_counter() - t0) * 1000
        return ms, ms
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start.record()
    t0 = time.perf_counter()
    fn()
    host = (time.perf_counter() - t0) * 1000
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end), host


@dataclasses.dataclass(frozen=True)
class Variant:
    """A timed configuration: a Setting (dashvl installed even at ratio 0, to time its overhead) and DashConfig's
    ``cuda_graph``."""

    setting: Setting
    cuda_graph: bool | None = None

    @property
    def name(self) -> str:
        """``"ratio=0.5 layer=2 kv=drop"`` (layer and kv left out of a vision-only setting), then the other fields
        that differ from their defaults (scope "all" counts as one; vision_layer only with a vision_ratio) and
        ``cuda_graph=False``: the form of the stored results, which bench/plot_results.py reads back."""
        s, parts = self.setting, []
        always = ("ratio", "layer", "kv") if s.ratio or not s.vision_ratio else ("ratio",)
        for f in dataclasses.fields(s):
            value = getattr(s, f.name)
            if f.name in always or (value != f.default and not (f.name == "scope" and value == "all")
                                    and not (f.name == "vision_layer" and not s.vision_ratio)):
                parts.append(f"{f.name}={value}")
        return " ".join(parts + ([f"cuda_graph={self.cuda_graph}"] if self.cuda_graph is not None else []))


def time_settings(model, make_call, settings, reps, warmup, cuda):
    """Time the unmodified model and each DASH setting, round-robin so that clock or load drift hits all alike.

    ``make_call()`` returns a no-arg function running one prefill; ``settings``: Variants of "llm" methods.
    Returns one row per setting: median device ms, median host ms to issue the call (on the GPU, a host time
    close to the device time means the prefill is bound by Python and launches), speedup, FLOPs limit.
    """
    call = make_call()
    variants = [None] + list(settings)
    samples = {i: [] for i in range(len(variants))}
    limits, vision_limits, peaks = {0: 1.0}, {0: 1.0}, {}
    with torch.no_grad():
        if cuda:  # let the clocks ramp up before timing
            t0 = time.perf_counter()
            while time.perf_counter() - t0 < 3:
                call()
            torch.cuda.synchronize()
        for rep in range(warmup + reps):
            for i, s in enumerate(variants):
                if s is None:
                    timing = _timed(call, cuda)
                else:
                    with apply(model, None, s.setting, trace=True, cuda_graph=s.cuda_graph) as applied:
                        handle = applied.handle
                        timing = _timed(call, cuda)
                        if rep == 0:
                            trace, vision = handle.trace, handle.vision_trace
                            limits[i] = flops_speedup(text_config(model), trace) if trace is not None else 1.0
                            if vision is not None:
                                full, halted = vision_flops(handle._vision.spec.blocks, vision)
                                vision_limits[i] = full / halted
                if rep >= warmup:
                    samples[i].append(timing)
                if cuda and rep == warmup:
                    peaks[i] = torch.cuda.max_memory_allocated() / 2**30
    base = statistics.median(t for t, _ in samples[0])
    rows = []
    for i, s in enumerate(variants):
        ms = statistics.median(t for t, _ in samples[i])
        host = statistics.median(h for _, h in samples[i])
        name = "unmodified" if s is None else s.name
        rows.append(dict(setting=name, ms=ms, host_ms=host, speedup=base / ms, limit=limits[i],
                         vision_limit=vision_limits.get(i, 1.0), **({"peak_gib": peaks[i]} if i in peaks else {})))
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


def model_args(p) -> None:
    """The arguments ``setup`` reads: --model, --mode, --device, --threads, --attn."""
    p.add_argument("--model", default="qwen2-vl-7b", help=f"one of {', '.join(SHAPES)}")
    p.add_argument("--mode", default="llm", choices=["llm", "e2e"], help="llm: text prompts; e2e: images "
                   "through the real vision tower (--tokens = visual tokens)")
    p.add_argument("--device", default="cuda")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    p.add_argument("--attn", default="sdpa")


def setup(args, script: str, argv=None):
    """The benchmarks' common start: threads, seed, the model at ``args.model``'s shapes (bf16 on CUDA, float32 on
    the CPU; the real vision tower only with ``args.mode == "e2e"``) and the record of machine, versions and
    command. Returns ``(model, cuda, info)``."""
    cuda = args.device.startswith("cuda")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = build_model(args.model, args.device, torch.bfloat16 if cuda else torch.float32, attn=args.attn,
                        vision=args.mode == "e2e")
    info = dict(device=torch.cuda.get_device_name() if cuda else
                f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads",
                torch=torch.__version__, transformers=__import__("transformers").__version__,
                python=platform.python_version(), model=args.model, mode=args.mode, attn=args.attn,
                command=f"python -m {script} " + " ".join(sys.argv[1:] if argv is None else argv))
    print(info, flush=True)
    return model, cuda, info
