"""kv="keep" shares the halted tokens' input-norm scale across the halted layers (adapters/frozen_hidden.py): the
result must be bit for bit each family's own norm, and the keys/values those of the unshared computation."""
import importlib
import sys

import pytest
import torch

from dashvl.adapters import frozen_hidden as fh
from dashvl.adapters.base import Adapter

NORMS = [("llama", "LlamaRMSNorm"), ("mistral", "MistralRMSNorm"), ("qwen2", "Qwen2RMSNorm"),
         ("qwen2_vl", "Qwen2VLRMSNorm"), ("qwen2_5_vl", "Qwen2_5_VLRMSNorm"), ("qwen3", "Qwen3RMSNorm"),
         ("qwen3_vl", "Qwen3VLTextRMSNorm"), ("gemma3", "Gemma3RMSNorm")]


def _norm_class(family, name):
    return getattr(importlib.import_module(f"transformers.models.{family}.modeling_{family}"), name)


def test_every_listed_norm_is_tested():
    assert {name for _, name in NORMS} == fh._WEIGHT_AFTER_CAST | fh._ONE_PLUS_WEIGHT


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("family,name", NORMS)
def test_shared_scale_is_the_norm_bit_for_bit(family, name, dtype):
    torch.manual_seed(0)
    hidden = (torch.randn(2, 37, 64) * 3).to(dtype)
    shared = fh.FrozenHidden(hidden)
    for eps in (1e-6, 1e-5, 1e-6):  # two layers with one eps reuse the scale; another eps gets its own
        norm = _norm_class(family, name)(64, eps=eps).to(dtype)
        with torch.no_grad():
            norm.weight.normal_()
            assert fh._kind(norm) is not None
            assert torch.equal(fh.input_norm(norm, shared, hidden.device), norm(hidden))
    assert len(shared._scaled) == 2


def test_an_unknown_norm_runs_whole():
    norm = torch.nn.LayerNorm(16)
    hidden = torch.randn(1, 5, 16)
    assert fh._kind(norm) is None
    assert torch.equal(fh.input_norm(norm, fh.FrozenHidden(hidden), hidden.device), norm(hidden))


def _qwen2_layer():
    from transformers import Qwen2Config
    from transformers.models.qwen2.modeling_qwen2 import Qwen2DecoderLayer, Qwen2RotaryEmbedding
    cfg = Qwen2Config(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2,
                      num_hidden_layers=1, vocab_size=100)
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(1)
    return Qwen2DecoderLayer(cfg, 0).eval(), Qwen2RotaryEmbedding(cfg)


def test_halted_kv_equals_the_unshared_computation():
    layer, rotary = _qwen2_layer()
    hidden = torch.randn(2, 11, 64)
    cos, sin = rotary(hidden, torch.arange(11)[None].expand(2, 11))
    with torch.no_grad():
        k, v = Adapter().halted_kv(layer, fh.FrozenHidden(hidden), cos, sin)
        x = layer.input_layernorm(hidden)
        attn = layer.self_attn
        k_ref = attn.k_proj(x).view(2, 11, -1, attn.head_dim).transpose(1, 2)
        v_ref = attn.v_proj(x).view(2, 11, -1, attn.head_dim).transpose(1, 2)
        rope = sys.modules[type(attn).__module__].apply_rotary_pos_emb
        _, k_ref = rope(k_ref, k_ref, cos, sin)
    assert torch.equal(k, k_ref) and torch.equal(v, v_ref)
    with torch.no_grad():  # a plain tensor still works (older callers)
        k2, v2 = Adapter().halted_kv(layer, hidden, cos, sin)
    assert torch.equal(k2, k_ref) and torch.equal(v2, v_ref)
