"""The method registry (dashvl.methods): its contract, its refusals, and that a new rule needs nothing else."""
import pytest
import torch

import dashvl
from dashvl import methods, policy
from dashvl.baselines import Downsample
from tests.helpers import Reference, build, make_inputs, reference_halted, visual_kinds


def test_registry_contract():
    llm = ("dash", "random", "fastv", "snapkv", "streamingllm", "dash-avg", "dash-snap", "dash-sinks")
    assert methods.names() == llm + ("downsample",)
    assert methods.names("llm") == llm == dashvl.config.METHODS
    assert methods.names("inputs") == ("downsample",)
    for name, method in methods.REGISTRY.items():
        assert isinstance(method, methods.Method) and method.name == name and methods.get(name) is method
        assert method.default_scope in dashvl.config.SCOPES and method.stage in ("llm", "inputs")
        assert method.summary and "\n" not in method.summary
    assert [methods.get(n).default_scope for n in ("dash", "random", "fastv")] == ["all", "all", "vision"]
    assert methods.get("fastv").needs_attention_input and not methods.get("dash").needs_attention_input
    assert [n for n in llm if methods.get(n).needs_history] == ["dash-avg", "dash-snap"]
    with pytest.raises(ValueError, match="stage must be one of"):
        methods.names("vision")


def test_unknown_and_misplaced_methods_are_refused_with_the_allowed_names():
    llm = r"'dash', 'random', 'fastv', 'snapkv', 'streamingllm', 'dash-avg', 'dash-snap', 'dash-sinks'"
    allowed = rf"\({llm}, 'downsample'\)"
    with pytest.raises(ValueError, match=rf"method must be one of {allowed}; got 'tome'"):
        methods.get("tome")
    with pytest.raises(ValueError, match=rf"method must be one of \({llm}\); got None"):
        dashvl.DashConfig(method=None)
    with pytest.raises(ValueError, match=r"^method 'downsample' acts on the inputs: use "
                                         r"dashvl.baselines.downsample\(model, processor, ratio\)"):
        dashvl.DashConfig(method="downsample")
    with pytest.raises(NotImplementedError):
        methods.get("downsample").score(None)


def test_default_scope_comes_from_the_method():
    assert dashvl.DashConfig(method="fastv").scope == "vision"
    assert dashvl.DashConfig(method="random").scope == "all"
    assert dashvl.DashConfig(method="fastv", scope="text").scope == "text"


def test_downsample_applies_through_the_baselines():
    model, proc = build("llava")
    with methods.get("downsample").apply(model, proc, 0.75) as ds:
        assert isinstance(ds, Downsample) and ds.ratio == 0.75 and ds.target < ds.side


def test_vision_scores():
    update = torch.randn(2, 5, 8)
    torch.testing.assert_close(methods.get("dash").vision_score(update, 3), update.norm(dim=-1))
    torch.testing.assert_close(methods.get("fastv").vision_score(update, 3), update.norm(dim=-1))  # Δ stands in
    drawn = methods.get("random").vision_score(update, 3)
    assert drawn.shape == (2, 5) and torch.equal(drawn, methods.get("random").vision_score(update, 3))
    assert not torch.equal(drawn, methods.get("random").vision_score(update, 4))


class _Loudest(methods.Method):
    """A rule written as a user would: halt the tokens with the *largest* Δ first."""

    name, summary = "loudest", "the largest attention update halts first (a test rule)"

    def score(self, ctx):
        return -policy.delta_scores(ctx.update)


def test_a_new_rule_is_one_class_and_one_registry_entry(monkeypatch):
    monkeypatch.setitem(methods.REGISTRY, "loudest", _Loudest())
    model, _ = build("qwen2_vl")
    inputs = make_inputs("qwen2_vl", 3)
    real = inputs["attention_mask"].bool()
    delta = Reference(model, 1, "drop").scores(inputs)
    want = reference_halted(-delta, real, visual_kinds(model, inputs["input_ids"]), 0.5)
    with dashvl.compress(model, method="loudest", ratio=0.5, layer=1) as h, torch.no_grad():
        model(**inputs)
    assert h.trace.method == "loudest"
    torch.testing.assert_close(h.trace.scores[real], -delta[real], atol=1e-5, rtol=1e-4)
    assert torch.equal(h.trace.halted, want)
    assert not torch.equal(want, reference_halted(delta, real, visual_kinds(model, inputs["input_ids"]), 0.5))
