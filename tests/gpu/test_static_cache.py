"""The static cache on a real GPU: generate(cache_implementation="static") compiles the decode step with
transformers' default CompileConfig (inductor, "reduce-overhead": CUDA graphs). What a compressed model
generates that way equals what it generates on the dynamic cache (the CPU tests hold that one to the slow
reference), for both kv modes, a padded batch, after the unmodified model compiled its own step (kv="drop" on its
compact halted layers), and ratio 0 equals the unmodified model's compiled static generation bit for bit.

    python -m pytest tests/gpu/test_static_cache.py     # on the device
"""
import pytest
import torch

import dashvl
from dashvl.engine import static_cache
from tests.helpers import generate, make_inputs

ATOL = 1e-4
STATIC = dict(cache_implementation="static")


@pytest.mark.parametrize("family", ["qwen2_vl", "llava", "llama"])
@pytest.mark.parametrize("kv", ["drop", "keep"])
def test_compiled_static_generation_equals_the_dynamic_cache(on_gpu, cuda, record, family, kv):
    model, _ = on_gpu(family)
    inputs = {k: v.to(cuda) for k, v in make_inputs(family, 3).items()}
    unmodified = generate(model, inputs, **STATIC)  # compiles the unmodified step first
    with dashvl.compress(model, method="dash", ratio=0.5, layer=1, kv=kv):
        dynamic = generate(model, inputs)
        static = generate(model, inputs, **STATIC)
        again = generate(model, inputs, **STATIC)  # a replay of the compiled step
        layers = static.past_key_values.layers  # kv="drop": the halted layers compact (fewer slots to read)
        widths = sorted({layer.keys.shape[2] for layer in layers})
        compact = (len(widths) == 2) if kv == "drop" else (len(widths) == 1)
        # generate took the compiled step: a kv="drop" model's own (engine.static_cache.CompiledDecode)
        compiled = bool(static_cache._COMPILED.get(model)) if kv == "drop" else hasattr(model, "_compiled_call")
    with dashvl.compress(model, method="dash", ratio=0, layer=1):
        zero = generate(model, inputs, **STATIC)
    diff = max((g - w).abs().max().item() for run in (static, again) for g, w in zip(run.logits, dynamic.logits))
    same = torch.equal(static.sequences, dynamic.sequences) and torch.equal(again.sequences, dynamic.sequences)
    zero_bitwise = torch.equal(zero.sequences, unmodified.sequences) and \
        all(torch.equal(a, b) for a, b in zip(zero.logits, unmodified.logits))
    result = dict(same_tokens=same, max_logit_diff=diff, ratio0_bitwise=zero_bitwise, compiled=compiled,
                  cache_widths=widths, compact=compact)
    record(result)
    assert same and diff < ATOL and zero_bitwise and compiled and compact, result
