"""Every refusal raises a clear error naming what is allowed, and leaves the model untouched."""
import pytest
import torch

import dashvl
from dashvl.tiny import tiny_decoder
from tests.helpers import build, make_inputs


def _hooks(model):
    return sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in model.modules())


@pytest.mark.parametrize("settings,match", [
    (dict(ratio=1.0), r"ratio must be a number in \[0, 1\)"),
    (dict(ratio=-0.1), r"ratio must be a number in \[0, 1\)"),
    (dict(ratio="0.5"), r"ratio must be a number"),
    (dict(ratio=True), r"ratio must be a number"),
    (dict(layer=-1), r"layer must be an int >= 0 or a float in \(0, 1\)"),
    (dict(layer=1.5), r"float .* must lie in \(0, 1\)"),
    (dict(layer=3), r"layer must be in \[0, 2\] for this model \(4 decoder layers\)"),
    (dict(layer="2"), r"layer must be an int"),
    (dict(kv="cache"), r"kv must be one of \('drop', 'keep'\)"),
    (dict(scope="image"), r"scope must be one of \('all', 'vision', 'text'\)"),
    (dict(protect_last=0), r"protect_last must be an int >= 1"),
])
def test_bad_settings(settings, match):
    model, _ = build("qwen2_vl")
    before = _hooks(model)
    with pytest.raises(ValueError, match=match):
        dashvl.compress(model, **settings)
    assert _hooks(model) == before


def test_layer_fraction_resolves_against_depth():
    model, _ = build("qwen2_vl")
    assert dashvl.compress(model, method="dash", ratio=0.5, layer=0.5).layer == 2
    assert dashvl.compress(model, method="dash", ratio=0.5, layer=0.99).layer == 2  # clamped to L - 2


def test_unsupported_model_type():
    from transformers import GPT2Config, GPT2LMHeadModel
    model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=50))
    with pytest.raises(ValueError, match=r"model type 'gpt2'.*supported: qwen2_vl, qwen2_5_vl, qwen3_vl, llava, llava_next, llava_onevision, internvl, llama, qwen2, mistral, gemma3_text, gemma3"):
        dashvl.compress(model)
    assert _hooks(model) == 0


def test_unsupported_attention_backend():
    model, _ = tiny_decoder("llama", attn="sdpa")
    model.config._attn_implementation = "flex_attention"
    with pytest.raises(ValueError, match=r"'flex_attention' is not supported.*sdpa, eager, flash_attention_2, "
                                         r"flash_attention_3, flash_attention_4"):
        dashvl.compress(model)
    assert _hooks(model) == 0


@pytest.mark.parametrize("backend", ["flash_attention_2", "flash_attention_3", "flash_attention_4"])
def test_keep_accepted_with_flash_attention(backend):
    """kv="keep" runs on the flash backends through keep_attention (tests/test_keep_attention.py checks it)."""
    model, _ = tiny_decoder("llama", attn="sdpa")
    model.config._attn_implementation = backend
    for kv in ("keep", "drop"):
        dashvl.compress(model, method="dash", kv=kv)
        dashvl.restore(model)


def test_hub_kernel_backends_are_refused():
    """transformers also takes hub kernels (``kernels-community/flash-attn3``) and paged backends by name:
    dashvl has not run those, so they are refused, naming what is supported."""
    model, _ = tiny_decoder("llama", attn="sdpa")
    for name in ("kernels-community/flash-attn3", "paged|flash_attention_2", "sdpa_paged"):
        model.config._attn_implementation = name
        with pytest.raises(ValueError, match=rf"attention backend {name!r} is not supported by dashvl; use one of sdpa"):
            dashvl.compress(model)
    model.config._attn_implementation = "sdpa"


def test_backend_switched_after_compress_is_refused_at_call():
    model, tok = tiny_decoder("llama")
    dashvl.compress(model, method="dash", ratio=0.5, layer=1)
    model.config._attn_implementation = "flex_attention"
    with pytest.raises(ValueError, match="not supported"):
        model(**tok(["what colour is the sky"], return_tensors="pt"))


def test_caches_other_than_dynamic_and_static_are_refused():
    """Static caches are served (tests/test_static_cache.py); quantized ones are not."""
    model, tok = build("llama")
    model.generation_config.cache_implementation = "quantized"
    try:
        with pytest.raises(ValueError, match=r"cache_implementation='quantized' is not supported by dashvl; use "
                                             r"None \(the dynamic cache\), 'offloaded' or 'static'"):
            dashvl.compress(model, method="dash", ratio=0.5, layer=1)
    finally:
        model.generation_config.cache_implementation = None


def test_chunked_prefill_is_refused():
    model, _ = build("llama")
    inputs = make_inputs("llama")
    model.generation_config.prefill_chunk_size = 4
    try:
        with pytest.raises(ValueError, match=r"chunked prefill .* is not supported"):
            dashvl.compress(model, method="dash", ratio=0.5)
    finally:
        model.generation_config.prefill_chunk_size = None
    dashvl.compress(model, method="dash", ratio=0.5, layer=1)
    model.generation_config.prefill_chunk_size = 4
    try:
        with pytest.raises(ValueError, match=r"chunked prefill"):
            model.generate(**inputs, max_new_tokens=2)
    finally:
        model.generation_config.prefill_chunk_size = None


def test_hidden_state_outputs_are_refused():
    model, _ = build("llama")
    inputs = make_inputs("llama")
    dashvl.compress(model, method="dash", ratio=0.5, layer=1)
    with pytest.raises(ValueError, match=r"output_hidden_states / output_attentions .* handle.trace"):
        model(**inputs, output_hidden_states=True)


def test_compiled_model_is_refused():
    model, _ = build("llama")
    with pytest.raises(ValueError, match=r"before torch.compile"):
        dashvl.compress(torch.compile(model))


def test_foreign_cache_is_refused():
    """A cache filled by the unmodified model has full-length halted layers; one from another ratio does not."""
    model, _ = build("llama")
    inputs = make_inputs("llama")
    with dashvl.compress(model, method="dash", ratio=0.5, layer=1):
        out = model.generate(**inputs, max_new_tokens=2, return_dict_in_generate=True)
    other = dashvl.compress(model, method="dash", ratio=0.5, layer=2)
    nxt = torch.cat([out.sequences, out.sequences[:, -1:]], 1)
    mask = torch.ones_like(nxt)
    with pytest.raises(RuntimeError, match=r"this cache was not built by this compressed model"):
        model(input_ids=nxt[:, -2:], attention_mask=mask, cache=out.past_key_values)
    other.remove()


def test_four_dim_mask_is_refused():
    model, _ = build("llama")
    inputs = make_inputs("llama")
    dashvl.compress(model, method="dash", ratio=0.5, layer=1)
    T = inputs["input_ids"].shape[1]
    with pytest.raises(ValueError, match=r"2-D attention_mask"):
        model(input_ids=inputs["input_ids"], attention_mask=torch.ones(1, 1, T, T))
