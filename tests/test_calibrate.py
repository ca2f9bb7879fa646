"""dashvl.calibrate: its refusals, that its read-back is what generate computes, and how it picks."""
import math

import pytest
import torch

import dashvl
from dashvl.calibrate import _read_back
from tests.helpers import build, make_inputs


def _samples(tok, n=2):
    texts = ["the cat sat on the mat and looked at the bird on the tree " * 3,
             "one two three four five six seven eight nine ten eleven twelve " * 3][:n]
    return [dict(tok(t, return_tensors="pt")) for t in texts]


@pytest.fixture(scope="module")
def llama():
    model, tok = build("llama")
    return model, tok


def test_refusals_name_what_is_allowed(llama):
    model, tok = llama
    samples = _samples(tok)
    with pytest.raises(ValueError, match="at least one sample"):
        dashvl.calibrate(model, [])
    for bad in (0, 1, 1.5, -0.1, True):
        with pytest.raises(ValueError, match=r"ratios must lie in \(0, 1\)"):
            dashvl.calibrate(model, samples, ratios=(0.5, bad), progress=False)
    with pytest.raises(ValueError, match="ratios must name at least one value"):
        dashvl.calibrate(model, samples, ratios=(), progress=False)
    with pytest.raises(ValueError, match="max_loss must be a number >= 0"):
        dashvl.calibrate(model, samples, max_loss=-0.1, progress=False)
    with pytest.raises(ValueError, match="kv must be one of"):
        dashvl.calibrate(model, samples, kv=("evict",), progress=False)
    with pytest.raises(ValueError, match="method must be one of"):
        dashvl.calibrate(model, samples, methods=("tome",), progress=False)
    with pytest.raises(ValueError, match=r"layer must be in \[0, 2\]"):
        dashvl.calibrate(model, samples, layers=(7,), progress=False)
    with pytest.raises(TypeError, match="a dict with input_ids"):
        dashvl.calibrate(model, ["a plain string"], progress=False)
    with pytest.raises(ValueError, match=r"one prompt each \(input_ids \[1, T\]\)"):
        dashvl.calibrate(model, [dict(tok(["a b c", "d e f"], return_tensors="pt", padding=True))], progress=False)
    with dashvl.compress(model, ratio=0.5, layer=1):
        with pytest.raises(ValueError, match="restore"):
            dashvl.calibrate(model, samples, progress=False)


@pytest.mark.parametrize("family", ["llama", "qwen2_vl", "llava"])
@pytest.mark.parametrize("kv", ["drop", "keep"])
def test_read_back_is_what_generate_computes(family, kv):
    """The NLL calibrate reads for a compressed model equals the one from generate's own logits, on the
    tokens that generate picked (so calibrate measures what a user would run), text LMs and VLMs alike."""
    model, tok = build(family)
    inputs = _samples(tok, 1)[0] if family == "llama" else make_inputs(family, batch=1)
    with torch.no_grad(), dashvl.compress(model, method="dash", ratio=0.5, layer=1, kv=kv):
        out = model.generate(**inputs, max_new_tokens=5, do_sample=False, output_logits=True,
                             return_dict_in_generate=True, eos_token_id=None)
        answer = out.sequences[:, inputs["input_ids"].shape[1]:]
        nll, agreement = _read_back(model, inputs, answer)
    want = -sum(float(torch.log_softmax(l.float(), -1)[0, t]) for l, t in zip(out.logits, answer[0])) / 5
    assert agreement == 1.0  # its own greedy tokens are its argmax
    assert math.isclose(nll, want, rel_tol=1e-4, abs_tol=1e-5)
    assert dashvl.calibrate(model, [inputs], layers=(1,), ratios=(0.5,), methods=("dash",), progress=False).rows


def test_pick_is_the_fastest_setting_within_the_budget(llama):
    model, tok = llama
    samples = _samples(tok)
    loose = dashvl.calibrate(model, samples, max_loss=math.inf, layers=(0, 1), ratios=(0.25, 0.75),
                             methods=("dash", "random"), progress=False)
    assert dashvl.get_handle(model) is None  # left as it was
    assert len(loose.rows) == 8 and loose.within_budget
    fastest = max(loose.rows, key=lambda r: r["flops_speedup"])
    assert (loose.config.layer, loose.config.ratio) == (fastest["layer"], fastest["ratio"]) == (0, 0.75)
    assert all(r["flops_speedup"] > 1 and 0 <= r["agreement"] <= 1 for r in loose.rows)
    # a budget between the rows' losses: the pick is the fastest row at or under it
    losses = sorted(r["loss"] for r in loose.rows)
    budget = max((losses[3] + losses[4]) / 2, 0.0)
    tight = dashvl.calibrate(model, samples, max_loss=budget, layers=(0, 1), ratios=(0.25, 0.75),
                             methods=("dash", "random"), progress=False)
    ok = [r for r in tight.rows if r["loss"] <= budget]
    assert tight.within_budget == bool(ok)
    if ok:
        best = max(ok, key=lambda r: (r["flops_speedup"], r["agreement"]))
        assert (tight.config.method, tight.config.layer, tight.config.ratio) == (best["method"], best["layer"], best["ratio"])
    assert "| dash | 0 | 0.25 | drop |" in tight.markdown()


def test_fractional_layers_that_resolve_alike_are_measured_once(llama):
    model, tok = llama
    cal = dashvl.calibrate(model, _samples(tok, 1), layers=(1, 0.25, 0.4), ratios=(0.5,), progress=False)
    assert [r["layer"] for r in cal.rows] == [1]  # 0.25 and 0.4 of 4 layers are layer 1 too
