import torch

import dashvl
from dashvl.flops import flops_speedup, layer_flops, prefill_flops
from tests.helpers import build, make_inputs


def test_layer_flops_by_hand():
    from transformers import LlamaConfig
    cfg = LlamaConfig(hidden_size=8, num_attention_heads=2, num_key_value_heads=1, intermediate_size=16)
    # per token: q,o 2*2*8*8=256; k,v 2*2*8*4=128; mlp 2*3*8*16=768; per pair 2*2*2*4=32
    assert layer_flops(cfg, 3, 6) == 3 * (256 + 128 + 768) + 6 * 32
    assert layer_flops(cfg, 3, 6, extra_kv=2) == layer_flops(cfg, 3, 6) + 2 * 128


def test_prefill_flops_from_trace():
    model, _ = build("qwen2_vl")
    inputs = make_inputs("qwen2_vl", 1)
    text = model.config.text_config
    T = inputs["input_ids"].shape[1]
    for kv in ("drop", "keep"):
        with dashvl.compress(model, method="dash", ratio=0.0, layer=1, kv=kv) as h, torch.no_grad():
            model(**inputs)
        full, dash = prefill_flops(text, h.trace)
        assert full == dash == 4 * layer_flops(text, T, T * (T + 1) // 2)
        with dashvl.compress(model, method="dash", ratio=0.75, layer=1, kv=kv) as h, torch.no_grad():
            model(**inputs)
        a = int(h.trace.active.sum())
        full, dash = prefill_flops(text, h.trace)
        if kv == "drop":
            assert dash == 2 * layer_flops(text, T, T * (T + 1) // 2) + 2 * layer_flops(text, a, a * (a + 1) // 2)
        assert 1 < flops_speedup(text, h.trace) < 2  # at most 4 / 2: layers 0-1 run in full


def test_vision_flops_count_active_patches():
    from dashvl.flops import vision_flops
    model, _ = build("qwen2_vl")
    inputs = make_inputs("qwen2_vl", 1, 2)
    blocks = model.model.visual.blocks
    with dashvl.compress(model, method="dash", ratio=0.0, vision_ratio=0.5, vision_layer=0) as h, torch.no_grad():
        model(**inputs)
    vt = h.trace.vision
    full, halted = vision_flops(blocks, vt)
    d = model.config.vision_config.embed_dim
    per_token = 2 * (3 * d * d + d * d + 2 * d * d * model.config.vision_config.mlp_ratio)
    frames = [hh * w for t, hh, w in inputs["image_grid_thw"].tolist()]
    kept = [n - n // 2 for n in frames]
    cost = lambda ns: sum(n * per_token + 4 * d * n * n for n in ns)  # noqa: E731
    assert full == 2 * cost(frames)
    assert halted == cost(frames) + cost(kept)
