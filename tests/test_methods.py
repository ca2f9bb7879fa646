"""The method registry (dashvl.methods): its contract, its refusals, and that a new rule needs nothing else."""
import pytest
import torch

import dashvl
from dashvl import methods, policy
from dashvl.baselines import Downsample
from tests.helpers import Reference, build, make_inputs, reference_halted, visual_kinds


def test_registry_contract():
    llm = ("dash", "random", "fastv", "snapkv", "streamingllm", "dash-avg", "dash-snap", "dash-sinks", "dash-q", "dash-q-heads",
           "divprune", "v2drop")
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
    llm = (r"'dash', 'random', 'fastv', 'snapkv', 'streamingllm', 'dash-avg', 'dash-snap', 'dash-sinks',"
           r" 'dash-q', 'dash-q-heads', 'divprune', 'v2drop'")
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


def _greedy_max_min(x, eligible):
    """DivPrune's selection written as loops: first the token farthest from its nearest eligible neighbour, then
    each time the one farthest from the picked set (cosine distance; ties to the earlier position)."""
    x = torch.nn.functional.normalize(x.float(), dim=-1)
    cand = [t for t in range(x.shape[0]) if eligible[t]]
    dist = lambda a, b: 1.0 - float(x[a] @ x[b])  # noqa: E731
    picked = []
    while len(picked) < len(cand):
        others = lambda t: [u for u in cand if u != t] if not picked else picked  # noqa: E731
        reach = {t: min((dist(t, u) for u in others(t)), default=2.0) for t in cand if t not in picked}
        picked.append(max(reach, key=lambda t: (reach[t], -t)))
    return picked


def test_divprune_order_is_greedy_max_min_diversity():
    torch.manual_seed(3)
    x = torch.randn(2, 12, 6)
    x[0, 5] = x[0, 2]            # a duplicate: distance 0 to its twin, so it is picked late
    x[1, 7] = 3 * x[1, 1]        # cosine distance ignores the scale
    eligible = torch.ones(2, 12, dtype=torch.bool)
    eligible[1, :3] = False
    scores = policy.diversity_order(x, eligible)
    for b in range(2):
        picked = _greedy_max_min(x[b], eligible[b])
        mine = sorted((t for t in range(12) if eligible[b, t]), key=lambda t: -float(scores[b, t]))
        assert mine == picked
        assert (scores[b][~eligible[b]] == policy.KEEP).all()
    # a row with one eligible token, and one with none
    one = torch.zeros(2, 12, dtype=torch.bool)
    one[0, 4] = True
    s = policy.diversity_order(x, one)
    assert s[0, 4] == 1 and (s[0][~one[0]] == policy.KEEP).all() and (s[1] == policy.KEEP).all()


def test_v2drop_needs_a_layer_below_the_activation_layer():
    model, _ = build("llama", "sdpa")
    with pytest.raises(ValueError, match=r"method 'v2drop' needs layer >= 1 \(it reads what layer 0 changed\); "
                                         r"got layer 0"):
        dashvl.compress(model, method="v2drop", layer=0, ratio=0.5)
    with dashvl.compress(model, method="v2drop", layer=1, ratio=0.5, scope="all"):
        pass
