"""ratio 0 is the unmodified model bit for bit; restore gives it back; compress twice equals once."""
import pytest
import torch

import dashvl
from tests.helpers import BACKBONES, build, generate, make_inputs

CASES = [(f, a, b, i) for f in BACKBONES for a in ("sdpa", "eager") for b in (1, 3) for i in (1, 2)
         if not (f == "llama" and i == 2)]


def _snapshot(model, inputs):
    with torch.no_grad():
        logits = model(**inputs).logits
    out = generate(model, inputs)
    return logits, out.sequences, torch.stack(out.logits)


@pytest.mark.parametrize("family,attn,batch,images", CASES)
@pytest.mark.parametrize("kv", ["drop", "keep"])
def test_ratio_zero_is_bitwise_unmodified(family, attn, batch, images, kv):
    model, _ = build(family, attn)
    inputs = make_inputs(family, batch, images)
    ref_logits, ref_seq, ref_step_logits = _snapshot(model, inputs)
    assert len(set(ref_seq[0, -8:].tolist())) > 1, "tiny model collapsed to one token: the test would be vacuous"
    with dashvl.compress(model, method="dash", ratio=0.0, layer=1, kv=kv) as h:
        logits, seq, step_logits = _snapshot(model, inputs)
        assert h.trace is not None and not h.trace.halted.any()
    real = inputs["attention_mask"].bool()
    assert torch.equal(logits[real], ref_logits[real])
    assert torch.equal(seq, ref_seq)
    assert torch.equal(step_logits, ref_step_logits)


@pytest.mark.parametrize("family", BACKBONES)
def test_restore_is_bitwise_and_removes_every_hook(family):
    model, _ = build(family)
    inputs = make_inputs(family, 3)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    ref_logits, ref_seq, _ = _snapshot(model, inputs)
    hooks_before = _count_hooks(model)

    dashvl.compress(model, method="dash", ratio=0.5, layer=1)
    halted_logits, *_ = _snapshot(model, inputs)
    assert not torch.equal(halted_logits, ref_logits)  # halting did change something
    assert dashvl.restore(model) is True
    assert dashvl.restore(model) is False

    assert _count_hooks(model) == hooks_before
    assert dashvl.get_handle(model) is None
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
    logits, seq, _ = _snapshot(model, inputs)
    assert torch.equal(logits, ref_logits) and torch.equal(seq, ref_seq)


def test_compress_twice_equals_compress_once():
    model, _ = build("qwen2_vl")
    inputs = make_inputs("qwen2_vl", 3)
    dashvl.compress(model, method="dash", ratio=0.5, layer=1)
    once, seq_once, _ = _snapshot(model, inputs)
    hooks_once = _count_hooks(model)
    dashvl.compress(model, method="dash", ratio=0.25, layer=2, kv="keep")
    h = dashvl.compress(model, method="dash", ratio=0.5, layer=1)
    twice, seq_twice, _ = _snapshot(model, inputs)
    assert _count_hooks(model) == hooks_once
    assert dashvl.get_handle(model) is h
    assert torch.equal(once, twice) and torch.equal(seq_once, seq_twice)


def test_handle_is_a_context_manager():
    model, _ = build("llama")
    with dashvl.compress(model, method="dash", ratio=0.5, layer=1) as h:
        assert h.active and dashvl.get_handle(model) is h
    assert not h.active and dashvl.get_handle(model) is None


def _count_hooks(model):
    return sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in model.modules())
