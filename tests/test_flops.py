import torch

import dashvl
from dashvl.flops import flops_speedup, layer_flops, prefill_flops
from helpers import build, make_inputs


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
        with dashvl.compress(model, ratio=0.0, layer=1, kv=kv) as h, torch.no_grad():
            model(**inputs)
        full, dash = prefill_flops(text, h.trace)
        assert full == dash == 4 * layer_flops(text, T, T * (T + 1) // 2)
        with dashvl.compress(model, ratio=0.75, layer=1, kv=kv) as h, torch.no_grad():
            model(**inputs)
        a = int(h.trace.active.sum())
        full, dash = prefill_flops(text, h.trace)
        if kv == "drop":
            assert dash == 2 * layer_flops(text, T, T * (T + 1) // 2) + 2 * layer_flops(text, a, a * (a + 1) // 2)
        assert 1 < flops_speedup(text, h.trace) < 2  # at most 4 / 2: layers 0-1 run in full
