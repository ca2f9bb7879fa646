"""Decode steps of a compressed model cost what the unmodified model's cost (issue 21): no hook on the decoder
layers, no aten op and no device-to-host read the unmodified step does not make. Counted with
``bench.decode_ops``'s probe (a TorchDispatchMode from the model's first pre-hook to its last post-hook)."""
import pytest
import torch

import dashvl
from bench.decode_ops import StepProbe, decode_step_counts, host_reads
from dashvl.engine import region
from tests.helpers import build, layers_of, make_inputs


def _hooks(module):
    return sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in module.modules())


def _extra(compressed, unmodified) -> int:
    """Aten ops the compressed step issues beyond the unmodified step's (``tolist`` is not an op)."""
    ops = lambda c: sum(c.values()) - c["tolist"]  # noqa: E731
    return ops(compressed) - ops(unmodified)


@pytest.mark.parametrize("settings", [dict(ratio=0), dict(ratio=0.5, layer=1),
                                      dict(ratio=0.5, layer=1, kv="keep")])
def test_decoder_layers_carry_no_hook_of_dashvls(settings):
    model, _ = build("qwen2_vl")
    layers = layers_of(model)
    before = _hooks(layers)
    with dashvl.compress(model, **settings), torch.no_grad():
        assert _hooks(layers) == before
        model.generate(**make_inputs("qwen2_vl", 1), max_new_tokens=2, do_sample=False)
        assert _hooks(layers) == before  # the activation layer's scoring hook is on during a prompt only
        assert layers_of(model) is layers


@pytest.mark.parametrize("family,attn", [("qwen2_vl", "sdpa"), ("llava", "sdpa"), ("llama", "eager")])
def test_a_decode_step_issues_no_op_the_unmodified_step_does_not(family, attn):
    """Batch 1, all keys valid: not one aten op more (N = 0), in both kv modes and at ratio 0. The halted
    layers attend to their shorter caches with no mask, so the step's ops are the unmodified step's."""
    model, _ = build(family, attn)
    inputs = make_inputs(family, 1)
    settings = [None, dict(ratio=0, layer=1), dict(ratio=0.5, layer=1), dict(ratio=0.5, layer=1, kv="keep")]
    base, *counts = decode_step_counts(model, inputs, settings)
    for s, c in zip(settings[1:], counts):
        assert _extra(c, base) <= 0 and not (c - base), (s, c - base)
        assert host_reads(c) <= host_reads(base), s


def test_a_padded_batch_decode_step_adds_one_op_for_its_mask():
    """Batch 3 with left padding: the halted layers need their own mask (their key slots differ from layer 0's);
    each step after the first extends the previous step's by one column: N = 1 (``constant_pad_nd``)."""
    model, _ = build("qwen2_vl")
    inputs = make_inputs("qwen2_vl", 3)
    assert not inputs["attention_mask"].all()
    settings = [None, dict(ratio=0.5, layer=1), dict(ratio=0.5, layer=1, kv="keep")]
    base, *counts = decode_step_counts(model, inputs, settings)
    for s, c in zip(settings[1:], counts):
        assert _extra(c, base) <= 1 and set(c - base) <= {"aten.constant_pad_nd"}, (s, c - base)
        assert host_reads(c) <= host_reads(base), s


def test_the_probe_sees_an_op_and_a_read():
    """The counts above can fail: one op and two host reads added in a halted layer show up."""
    model, _ = build("llama")
    inputs = make_inputs("llama", 1)

    def read(module, args, output):
        bool(output.sum() > 0)  # sum, gt, _local_scalar_dense
        output[0, 0, :2].tolist()

    steps = []
    with dashvl.compress(model, method="dash", ratio=0.5, layer=1), torch.no_grad():
        for extra in (None, read):
            hook = layers_of(model)[3].register_forward_hook(extra) if extra else None
            try:
                with StepProbe(model) as probe:
                    model.generate(**inputs, max_new_tokens=3, do_sample=False)
            finally:
                if hook is not None:
                    hook.remove()
            steps.append(probe.steps[-1])
    plain, step = steps
    assert host_reads(step) == host_reads(plain) + 2
    assert step["aten.sum"] == plain["aten.sum"] + 1


def test_hooks_users_put_on_halted_layers_fire_at_every_step():
    model, _ = build("qwen2_vl")
    inputs = make_inputs("qwen2_vl", 1)
    seen = []
    hooks = [layers_of(model)[i].register_forward_hook(lambda m, a, o, i=i: seen.append((i, o.shape[1])))
             for i in (2, 3)]
    try:
        with dashvl.compress(model, method="dash", ratio=0.5, layer=1) as h, torch.no_grad():
            model.generate(**inputs, max_new_tokens=3, do_sample=False)
    finally:
        for hook in hooks:
            hook.remove()
    width = int(h.trace.active.sum())
    assert width < inputs["input_ids"].shape[1]
    assert seen == [(2, width), (3, width)] + [(2, 1), (3, 1)] * 2


def test_the_layout_counts_decode_keys_and_materialises_them_on_demand():
    layout = region.CacheLayout(torch.tensor([[0, 2, 5], [1, 4, -1]]), all_valid=False)
    for position in (6, 7, 8):
        layout.append(position)
    assert (layout.batch, layout.length) == (2, 6)
    layout.append(10)  # not contiguous: the counted keys are materialised first
    assert layout.length == 7
    assert layout.key_pos.tolist() == [[0, 2, 5, 6, 7, 8, 10], [1, 4, -1, 6, 7, 8, 10]]


@pytest.mark.parametrize("backend", ["sdpa", "eager", "flash_attention_2"])
def test_each_step_mask_equals_the_mask_built_from_the_positions(backend):
    layout = region.CacheLayout(torch.tensor([[0, 2, 5], [1, 4, -1]]), all_valid=False)
    for position in range(6, 10):
        layout.append(position)
        got = region.step_mask(layout, backend, torch.float32)
        key_pos = torch.cat([torch.tensor([[0, 2, 5], [1, 4, -1]]), torch.arange(6, position + 1).expand(2, -1)], 1)
        want = region.attention_mask(key_pos, torch.full((2, 1), position), False, False, backend, torch.float32)
        assert got.shape == want.shape and torch.equal(got, want), position
    valid = region.CacheLayout(torch.arange(4).expand(2, 4), all_valid=True)
    valid.append(4)
    assert region.step_mask(valid, backend, torch.float32) is None
