"""dashvl.setting: the Setting type, its text form, apply, and the front ends that must take every field."""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import subprocess
import sys

import pytest
import torch

import dashvl
from dashvl.baselines import downsample
from dashvl.config import METHODS as LLM_METHODS
from dashvl.setting import Setting, apply, method_names
from tests.helpers import build, make_inputs

# A valid value other than the default, per field. A field added to Setting must get one here; the tests below then
# check that every front end takes it.
EXAMPLES = dict(method="random", ratio=0.5, layer=0.5, kv="keep", scope="vision", protect_last=2, seed=3,
                vision_ratio=0.5, vision_layer=1)


def test_every_field_has_an_example():
    assert set(EXAMPLES) == set(Setting.fields()), "give each Setting field an example value in EXAMPLES"
    for f in dataclasses.fields(Setting):
        assert EXAMPLES[f.name] != f.default


# ----------------------------------------------------------------- text form


@pytest.mark.parametrize("name", Setting.fields())
def test_each_field_round_trips_through_text(name):
    setting = Setting(**{name: EXAMPLES[name]})
    assert str(setting) == setting.to_args() and f"{name}=" in str(setting)
    back = Setting.parse(str(setting))
    assert back == setting and type(getattr(back, name)) is type(EXAMPLES[name])


def test_a_setting_of_every_field_round_trips_and_defaults_read_baseline():
    full = Setting(**EXAMPLES)
    assert Setting.parse(str(full)) == full and str(full).count("=") == len(Setting.fields())
    assert str(Setting()) == "baseline" and Setting().to_args() == ""
    assert Setting.parse("") == Setting.parse("baseline") == Setting.parse(" , ") == Setting()
    assert Setting.parse("scope=none") == Setting() and Setting.parse("layer=2") == Setting()
    assert Setting.parse(" method = fastv , ratio=0.75 ") == Setting(method="fastv", ratio=0.75)
    with pytest.raises(dataclasses.FrozenInstanceError):
        full.ratio = 0.1


BAD = [  # (text, the field it is about, what the message must say)
    ("method=tome", "method", r"method must be one of \('dash', 'random', 'fastv', 'snapkv', 'streamingllm', 'dash-avg', 'dash-snap', 'dash-sinks', 'dash-q', 'dash-q-heads', 'divprune', 'v2drop', "
                             r"'downsample'\); got 'tome'"),
    ("ratio=1", "ratio", r"ratio must be a number in \[0, 1\)"),
    ("ratio=-0.1", "ratio", r"ratio must be a number in \[0, 1\)"),
    ("ratio=much", "ratio", r"ratio takes a number in \[0, 1\).*got 'much'"),
    ("layer=1.5", "layer", r"layer as a float is a fraction of the depth and must lie in \(0, 1\)"),
    ("layer=-1", "layer", r"layer must be an int >= 0 or a float in \(0, 1\)"),
    ("layer=top", "layer", r"layer takes the activation layer l_s: an int >= 0, or a fraction"),
    ("kv=sometimes", "kv", r"kv must be one of \('drop', 'keep'\)"),
    ("scope=pixels", "scope", r"scope must be one of \('all', 'vision', 'text'\)"),
    ("protect_last=0", "protect_last", r"protect_last must be an int >= 1"),
    ("protect_last=one", "protect_last", r"protect_last takes an int >= 1"),
    ("seed=1.5", "seed", r"seed takes an int"),
    ("vision_ratio=1.0", "vision_ratio", r"vision_ratio must be a number in \[0, 1\)"),
    ("vision_layer=-2", "vision_layer", r"vision_layer must be an int >= 0 or a float in \(0, 1\)"),
    ("method=downsample,vision_ratio=0.5", "vision_ratio", r"vision_ratio halts inside the vision tower: it "
                                                           r"combines with dash, random, fastv, snapkv, streamingllm, dash-avg, dash-snap, dash-sinks, dash-q, dash-q-heads, divprune, v2drop, "
                                                           r"not with downsample"),
]


@pytest.mark.parametrize("text, field, allowed", BAD)
def test_a_bad_value_names_the_field_and_what_it_takes(text, field, allowed):
    with pytest.raises(ValueError, match=allowed):
        Setting.parse(text)
    name, value = text.split(",")[-1].split("=")
    with pytest.raises(ValueError, match=field):
        Setting.parse_value(name, value) if "," not in text else Setting.from_args(Setting.split(text))


def test_every_field_has_a_refused_value_above():
    assert {field for _, field, _ in BAD} == set(Setting.fields())


@pytest.mark.parametrize("text, message", [
    ("rate=0.5", r"unknown setting 'rate'; the settings are method, ratio, layer, kv, scope, protect_last, seed, "
                 r"vision_ratio, vision_layer"),
    ("ratio", r"key=value pairs separated by commas .* got 'ratio'"),
    ("ratio=0.5,ratio=0.75", "ratio is given twice"),
    ("baseline,ratio=0.5", "got 'baseline'"),
])
def test_a_malformed_text_says_what_is_expected(text, message):
    with pytest.raises(ValueError, match=message):
        Setting.parse(text)


def test_labels_are_the_results_folders_names():
    assert [Setting(**kw).label for kw in (
        {}, dict(method="fastv"), dict(ratio=0.5), dict(method="downsample", ratio=0.75),
        dict(ratio=0.5, vision_ratio=0.5), dict(method="random", vision_ratio=0.25))] == \
        ["baseline", "baseline", "dash-0.5", "downsample-0.75", "dash-0.5-v0.5", "random-0-v0.25"]
    assert Setting(ratio=0).label == "baseline" and isinstance(Setting(ratio=0).ratio, float)


def test_methods_come_from_the_registry_that_dash_config_reads():
    assert method_names("llm") == LLM_METHODS and method_names("inputs") == ("downsample",)
    assert method_names() == LLM_METHODS + ("downsample",)
    assert {Setting(method=m).stage for m in method_names()} == {"llm", "inputs"}
    with pytest.raises(ValueError, match=r"stage must be one of \('llm', 'inputs'\) or None"):
        method_names("vision")


def test_dash_config_carries_every_field():
    config = Setting(**EXAMPLES).dash_config()
    assert all(getattr(config, name) == value for name, value in EXAMPLES.items())
    assert Setting(method="fastv").dash_config().scope == "vision"  # DashConfig's default for FastV
    with pytest.raises(ValueError, match=r"use dashvl.baselines.downsample\(model, processor, ratio\)"):
        Setting(method="downsample", ratio=0.5).dash_config()


def test_check_refuses_what_the_model_cannot_take():
    Setting(layer=2).check(4)
    with pytest.raises(ValueError, match=r"layer must be in \[0, 2\] for this model \(4 decoder layers\)"):
        Setting(method="downsample", ratio=0.5, layer=3).check(4)
    with pytest.raises(ValueError, match=r"vision_layer must be in \[0, 0\]"):
        Setting(vision_ratio=0.5, vision_layer=1).check(4, 2)
    with pytest.raises(ValueError, match="vision_ratio must be 0 for this model"):
        Setting(vision_ratio=0.5).check(4, None)


# ----------------------------------------------------------------- apply


@torch.no_grad()
def _logits(model, inputs):
    return model(**inputs).logits


@pytest.mark.parametrize("kv", ["drop", "keep"])
def test_apply_is_compress_and_remove_gives_the_model_back(kv):
    model, proc = build("qwen2_vl")
    inputs = make_inputs("qwen2_vl", batch=2)
    plain = _logits(model, inputs)
    setting = Setting(method="dash", ratio=0.5, layer=1, kv=kv)
    with dashvl.compress(model, setting.dash_config()) as handle:
        want, want_trace = _logits(model, inputs), handle.trace
    with apply(model, proc, setting) as applied:
        assert dashvl.get_handle(model) is applied.handle and applied.processor is proc
        got = _logits(model, inputs)
        assert torch.equal(applied.trace.active, want_trace.active) and applied.trace.halted.any()
    assert torch.equal(got, want) and not torch.equal(got, plain)
    assert dashvl.get_handle(model) is None and torch.equal(_logits(model, inputs), plain)
    applied.remove()  # idempotent


def test_apply_downsample_is_the_baseline_and_remove_restores_the_processor():
    model, proc = build("llava")
    inputs = make_inputs("llava")
    plain, patch = _logits(model, inputs), proc.patch_size
    text, images = ["<image>\nwhat is this?"], [make_image()]
    with downsample(model, proc, 0.75) as ds:
        want_inputs = ds.process(text=text, images=images, return_tensors="pt")
        want = _logits(model, want_inputs)
    setting = Setting(method="downsample", ratio=0.75)
    with apply(model, proc, setting) as applied:
        assert applied.handle is None and applied.trace is None and applied.downsample is not None
        assert applied.processor.tokenizer is proc.tokenizer  # the processor's attributes, its call downsampled
        got_inputs = applied.processor(text=text, images=images, return_tensors="pt")
        got = _logits(model, got_inputs)
    assert all(torch.equal(got_inputs[k], want_inputs[k]) for k in want_inputs) and torch.equal(got, want)
    assert proc.patch_size == patch and torch.equal(_logits(model, inputs), plain)
    with apply(model, proc, setting, trace=True) as applied:  # a ratio-0 trace of the smaller prompt
        assert torch.equal(_logits(model, got_inputs), want)
        assert not applied.trace.halted.any() and applied.trace.kinds.shape[1] == got_inputs["input_ids"].shape[1]
    assert dashvl.get_handle(model) is None and torch.equal(_logits(model, inputs), plain)


def make_image():
    from dashvl.tiny import sample_image
    return sample_image(112, 84, seed=1)


def test_apply_baseline_installs_nothing_unless_a_trace_is_asked_for():
    model, proc = build("qwen2_vl")
    inputs = make_inputs("qwen2_vl")
    plain = _logits(model, inputs)
    with apply(model, proc, Setting(method="fastv", layer=1)) as applied:
        assert applied.handle is None and dashvl.get_handle(model) is None and applied.processor is proc
    with apply(model, proc, Setting(layer=1), trace=True) as applied:
        assert torch.equal(_logits(model, inputs), plain) and applied.trace.layer == 1
        assert not applied.trace.halted.any()


def test_apply_refuses_before_touching_the_model():
    model, proc = build("llava")
    plain_patch, hooks = proc.patch_size, dict(model.model.multi_modal_projector._forward_hooks)
    with pytest.raises(ValueError, match=r"layer must be in \[0, 2\]"):
        apply(model, proc, Setting(method="downsample", ratio=0.75, layer=3), trace=True)
    assert proc.patch_size == plain_patch and dict(model.model.multi_modal_projector._forward_hooks) == hooks
    with pytest.raises(ValueError, match="apply needs the model's processor"):
        apply(model, None, Setting(method="downsample", ratio=0.5))
    with pytest.raises(TypeError, match="setting must be a dashvl.Setting"):
        apply(model, proc, "ratio=0.5")
    with apply(model, proc, Setting(ratio=0.5, layer=1)):
        with pytest.raises(ValueError, match=r"already in force on this model \(ratio=0.5,layer=1\): remove\(\) it"):
            apply(model, proc, Setting(ratio=0.25, layer=1))
    with dashvl.compress(model, method="dash", ratio=0.5, layer=1):
        with pytest.raises(ValueError, match=r"already compressed \(dashvl.compress\): dashvl.restore"):
            apply(model, proc, Setting(method="downsample", ratio=0.5))
    assert dashvl.get_handle(model) is None and proc.patch_size == plain_patch


# ----------------------------------------------------------------- the front ends take every field (issue 15)


@pytest.mark.parametrize("name", Setting.fields())
def test_every_field_round_trips_through_run_py_model_args(name):
    """--model-args NAME=VALUE is --NAME VALUE: every configuration but the baseline carries it, and it leaves
    the model_args that go to lmms-eval."""
    from eval import run as runner

    text = Setting(**{name: EXAMPLES[name]}).to_args().split("=", 1)[1]
    by_args = runner.parse_args(["--model-args", f"max_pixels=50176,{name}={text}"])
    assert by_args.model_args == "max_pixels=50176"
    settings = runner.settings_for(by_args)
    halting = [s for s in settings if not s.baseline]
    assert halting and all(getattr(s, name) == EXAMPLES[name] for s in halting), [str(s) for s in settings]
    flag = "--" + name.replace("_", "-")
    assert runner.settings_for(runner.parse_args([flag, text])) == settings
    with pytest.raises(SystemExit):
        runner.parse_args([flag, text, "--model-args", f"{name}={text}"])


@pytest.mark.skipif(importlib.util.find_spec("lmms_eval") is None, reason="lmms-eval is not installed")
def test_every_field_round_trips_through_the_plugins_model_args():
    """lmms-eval types the model_args (its own parser, in a subprocess: importing it silences all warnings);
    the plugin takes every Setting field out of them and leaves the rest."""
    from dashvl.lmms_eval_plugin import _split_dash_args

    strings = [f"pretrained=tiny,{Setting(**{n: v}).to_args()},max_pixels=50176" for n, v in EXAMPLES.items()]
    strings.append(f"pretrained=tiny,{Setting(**EXAMPLES).to_args()},max_pixels=50176")
    code = ("import json, sys\nfrom lmms_eval.utils import simple_parse_args_string as parse\n"
            "print('RESULT' + json.dumps([parse(s) for s in json.loads(sys.argv[1])]))")
    proc = subprocess.run([sys.executable, "-c", code, json.dumps(strings)], capture_output=True, text=True,
                          timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    parsed = json.loads(proc.stdout.split("RESULT", 1)[1])
    for (name, value), kwargs in zip(EXAMPLES.items(), parsed):
        setting = _split_dash_args(kwargs)
        assert setting == Setting(**{name: value}), name
        assert kwargs == {"pretrained": "tiny", "max_pixels": 50176}, name
    assert _split_dash_args(parsed[-1]) == Setting(**EXAMPLES)


def test_the_terminal_demo_takes_a_setting_and_its_own_flags():
    from apps import terminal_demo as demo

    parser = demo.build_parser()

    def setting(*argv):
        return demo.setting_of(parser.parse_args(list(argv)), parser)

    assert setting() == Setting(ratio=demo.DEFAULT_RATIO)
    assert setting("--ratio", "0.75", "--layer", "1", "--kv", "keep") == Setting(ratio=0.75, layer=1, kv="keep")
    assert setting("--setting", "method=downsample,ratio=0") == Setting(method="downsample")
    assert setting("--setting", "method=fastv,seed=2", "--ratio", "0.25") == Setting(method="fastv", seed=2, ratio=0.25)
    for argv in (["--setting", "ratio=0.5", "--ratio", "0.25"], ["--setting", "rate=0.5"], ["--kv", "sometimes"]):
        with pytest.raises(SystemExit):
            setting(*argv)
