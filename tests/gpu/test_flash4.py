"""FlashAttention 4 (``attn_implementation="flash_attention_4"``, the flash-attn-4 wheel's CuTe kernels) on a real
GPU: dashvl on the real kernel against itself and against SDPA.

The CPU tests hold the flash contract (2-D masks or None, gathered tokens, no gapped position ids) to the slow
reference with an emulated kernel. These run the real one, in bf16 (FA4 has no float32), on random-weight Qwen2-VL
and LLaVA language models with the 7B models' head_dim 128 (``bench.common.SHAPES``: 6 layers), a text prompt of
batch 1 and a left-padded batch of 3, greedy ``generate()``:

- ratio 0 on FA4 is bit for bit the unmodified FA4 model;
- DASH drop with the halted layers replayed as a CUDA graph equals them run one by one, on FA4;
- FA4 against SDPA on the same inputs and the same halted tokens (``method="random"``: its seeded draw does not
  depend on the kernels' rounding, so both halt the same set; Δ's ranking can swap near-equal tokens in bf16):
  the same first tokens, and the prefill logits as close as the *unmodified* FA4 and SDPA models are to each
  other (twice their gap: the kernels' own bf16 rounding, which is what "within bf16 tolerance" means here);
- DASH with Δ on FA4 and SDPA halting nearly the same tokens (recorded: the overlap of the halted sets);
- kv="keep" on FA4 (``keep_attention`` with FA4's varlen kernels) against SDPA's masked keep, as close as that.

    python -m pytest tests/gpu/test_flash4.py      # on the device, after bash bench/run_gpu_flash4.sh's set-up
"""
import pytest
import torch

import dashvl

NEW = 16
DEVICE = "cuda"


@pytest.fixture(scope="module")
def fa4():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU (run on the device)")
    try:
        import flash_attn.cute  # noqa: F401
    except ImportError as err:
        pytest.skip(f"flash-attn-4 is not installed ({err}); bash bench/run_gpu_flash4.sh installs it")
    return "flash_attention_4"


def _model(name):
    from bench.common import build_model
    torch.manual_seed(0)
    model = build_model(name, DEVICE, torch.bfloat16, attn="sdpa", vision=False)
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    return model


def _inputs(batch: int):
    torch.manual_seed(batch)
    lengths = [320, 280, 200][:batch]
    T = max(lengths)
    ids = torch.randint(10, 8000, (batch, T), device=DEVICE)
    mask = torch.zeros(batch, T, dtype=torch.long, device=DEVICE)
    for b, n in enumerate(lengths):
        mask[b, T - n:] = 1  # left padding, as generate() wants it
    ids = ids.masked_fill(mask == 0, 0)
    return dict(input_ids=ids, attention_mask=mask)


def _set(model, backend):
    model.set_attn_implementation(backend)
    assert model.config.get_text_config(decoder=True)._attn_implementation == backend


def _gen(model, inputs):
    with torch.no_grad():
        return model.generate(**inputs, max_new_tokens=NEW, min_new_tokens=NEW, do_sample=False, output_logits=True,
                              return_dict_in_generate=True)


def _run(model, inputs, **setting):
    if not setting:
        return _gen(model, inputs), None
    with dashvl.compress(model, **setting) as h:
        out = _gen(model, inputs)
        return out, h.trace.halted.clone()


def _prefill_diff(a, b) -> float:
    return (a.logits[0].float() - b.logits[0].float()).abs().max().item()


def _agree(a, b) -> int:
    """How many leading generated tokens (every row) two runs share."""
    same = (a.sequences == b.sequences).all(0)[-NEW:]
    return int(same.long().cumprod(0).sum())


@pytest.fixture(scope="module", params=["qwen2-vl-check", "llava-check"])
def model(request, fa4):
    m = _model(request.param)
    yield m
    dashvl.release_graphs(m)
    del m
    torch.cuda.empty_cache()


@pytest.mark.parametrize("batch", [1, 3])
def test_flash_attention_4_against_itself_and_sdpa(fa4, model, record, batch):
    inputs = _inputs(batch)
    random = dict(method="random", ratio=0.5, layer=2, kv="drop", seed=0)
    dash = dict(method="dash", ratio=0.5, layer=2, kv="drop")
    out = {}
    for backend in ("sdpa", fa4):
        _set(model, backend)
        out[backend, "unmodified"] = _run(model, inputs)
        out[backend, "random_layers"] = _run(model, inputs, **random, cuda_graph=False)
        out[backend, "random_graph"] = _run(model, inputs, **random, cuda_graph=None)
        out[backend, "dash"] = _run(model, inputs, **dash)
        # kv="keep": SDPA with its mask (a short prompt), FA4 through keep_attention (FA4's varlen kernels)
        out[backend, "random_keep"] = _run(model, inputs, **dict(random, kv="keep"))
    zero, _ = _run(model, inputs, ratio=0.0, layer=2)  # the model is on FA4 now
    _set(model, "sdpa")

    fa_unmod, sd_unmod = out[fa4, "unmodified"][0], out["sdpa", "unmodified"][0]
    fa_layers, sd_layers = out[fa4, "random_layers"], out["sdpa", "random_layers"]
    fa_graph = out[fa4, "random_graph"][0]
    kernel_gap = _prefill_diff(fa_unmod, sd_unmod)
    h_fa, h_sd = out[fa4, "dash"][1], out["sdpa", "dash"][1]
    result = dict(
        ratio0_bitwise=torch.equal(zero.sequences, fa_unmod.sequences)
        and all(torch.equal(a, b) for a, b in zip(zero.logits, fa_unmod.logits)),
        graph_same_tokens=torch.equal(fa_graph.sequences, fa_layers[0].sequences),
        graph_vs_layers_logit_diff=max((a.float() - b.float()).abs().max().item()
                                       for a, b in zip(fa_graph.logits, fa_layers[0].logits)),
        unmodified_fa4_vs_sdpa_prefill_diff=kernel_gap,
        unmodified_fa4_vs_sdpa_tokens_agreeing=_agree(fa_unmod, sd_unmod),
        same_halted_set=torch.equal(fa_layers[1], sd_layers[1]),
        dash_fa4_vs_sdpa_prefill_diff=_prefill_diff(fa_layers[0], sd_layers[0]),
        dash_fa4_vs_sdpa_tokens_agreeing=_agree(fa_layers[0], sd_layers[0]),
        first_token_same=torch.equal(fa_layers[0].sequences[:, -NEW], sd_layers[0].sequences[:, -NEW]),
        delta_halted_overlap=((h_fa & h_sd).sum() / h_sd.sum().clamp(min=1)).item(),
        halted_per_row=h_fa.sum(1).tolist(),
        keep_same_halted_set=torch.equal(out[fa4, "random_keep"][1], out["sdpa", "random_keep"][1]),
        keep_fa4_vs_sdpa_prefill_diff=_prefill_diff(out[fa4, "random_keep"][0], out["sdpa", "random_keep"][0]),
        keep_fa4_vs_sdpa_tokens_agreeing=_agree(out[fa4, "random_keep"][0], out["sdpa", "random_keep"][0]),
    )
    record(result)
    assert result["ratio0_bitwise"], result
    assert result["graph_same_tokens"] and result["graph_vs_layers_logit_diff"] <= max(2 * kernel_gap, 1e-3), result
    assert result["same_halted_set"] and result["first_token_same"], result
    assert result["dash_fa4_vs_sdpa_prefill_diff"] <= max(2 * kernel_gap, 1e-3), result
    assert torch.equal(h_fa.sum(1), h_sd.sum(1)), result
    assert result["keep_same_halted_set"] and result["keep_fa4_vs_sdpa_tokens_agreeing"] >= 1, result
    assert result["keep_fa4_vs_sdpa_prefill_diff"] <= max(2 * kernel_gap, 1e-3), result
