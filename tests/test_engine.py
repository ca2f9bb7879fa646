"""The engine package's seams: module aliases, no import cycle, the per-call plan, the trace cache, the graph runner."""
import ast
import pathlib

import torch

import dashvl
from dashvl.engine import graphs
from dashvl.engine.plan import CallPlan
from tests.helpers import build, make_inputs

PACKAGE = pathlib.Path(dashvl.__file__).parent


def test_old_graphs_module_is_the_engines():
    import dashvl.graphs as old

    assert old is graphs and dashvl.graphs is graphs
    assert old.release is dashvl.release_graphs and old.bucket_width(273) == 288
    assert "EMULATE" in vars(old) and "MAX_SLOTS" in vars(old)


def test_engine_imports_neither_the_api_nor_a_front_end():
    for path in (PACKAGE / "engine").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                names = [f"{node.module or ''}.{a.name}" for a in node.names] if node.level else [node.module]
                assert not any(n.split(".")[-1] in ("api", "lmms", "demo", "synth", "models") or
                               (n or "").startswith("dashvl.api") for n in names), (path.name, names)


def test_every_plan_field_is_declared_in_init():
    """Whatever the hooks set on a call's plan, CallPlan.__init__ declared it (no fields created later)."""
    declared = set(vars(CallPlan(1, 2, None, None, None, {})))
    model, _ = build("qwen2_vl")
    inputs = make_inputs("qwen2_vl", 3)
    seen = []

    def peek(module, args, output):
        seen.append(set(vars(handle._flow.plan)))

    for kv in ("drop", "keep"):
        with dashvl.compress(model, method="dash", ratio=0.5, layer=1, kv=kv) as handle:
            hook = model.model.language_model.layers[-1].register_forward_hook(peek)
            try:
                with torch.no_grad():
                    model.generate(**inputs, max_new_tokens=2, do_sample=False)
            finally:
                hook.remove()
    assert len(seen) == 4 and all(fields == declared for fields in seen)
    assert len(declared) >= 20


def test_trace_is_rebuilt_per_prefill_and_cached_between():
    model, _ = build("llama")
    one, three = make_inputs("llama", 1), make_inputs("llama", 3)
    with dashvl.compress(model, method="dash", ratio=0.5, layer=1) as h, torch.no_grad():
        assert h.trace is None
        model(**three)
        first = h.trace
        assert h.trace is first and first.scores.shape[0] == 3
        model(**three)  # the same prompt again: a new prefill, a new trace with the same content
        second = h.trace
        assert second is not first and torch.equal(second.halted, first.halted)
        model(**one)
        assert h.trace.scores.shape[0] == 1


def test_halted_runner_runs_a_plain_callable():
    seen = []

    def run(hidden, kwargs):
        seen.append(kwargs)
        return hidden * 2

    runner = graphs.HaltedRunner(run, "full_attention")
    out = runner(torch.ones(1, 3, 4), attention_mask=None, position_embeddings=(1, 2))
    assert torch.equal(out, torch.full((1, 3, 4), 2.0)) and runner.attention_type == "full_attention"
    assert seen == [{"attention_mask": None, "position_embeddings": (1, 2)}]
