"""kv="keep" without a mask on the real kernels (``dashvl.engine.keep_attention``), on the H200:

- each kernel (torch's flash varlen, FA4's when installed), reading every chunk's prefix in place (varlen offsets
  that repeat, with ``seqused_k``), against the definition in float32 (every valid key at a position up to the
  query's), as close as SDPA's own masked bf16 kernel is to it;
- on 6-layer random bf16 models at the 7B models' head shapes (``bench.common.SHAPES``), prompts of about 3k
  tokens, batch 1 and a left-padded batch of 3: keep through keep_attention (``MODE="always"``) against keep with
  SDPA's mask (``MODE="never"``), the same halted tokens, prefill logits as close as the unmodified model on SDPA is
  to itself on eager (the kernels' own bf16 rounding), the first greedy tokens the same; batch 1 takes the graph
  path (the chunking captured with the layers), batch 3 the layers one by one.

    python -m pytest tests/gpu/test_keep_kernels.py      # on the device (bash bench/run_gpu_keep.sh)
"""
import pytest
import torch

import dashvl
from dashvl.engine import keep_attention as ka
from tests.test_keep_attention import _masked_attention, _random_layout

DEVICE = "cuda"
NEW = 8


@pytest.fixture(scope="module")
def gpu():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU (run on the device)")
    return DEVICE


def _kernels():
    names = ["torch_flash"]
    try:
        import flash_attn.cute  # noqa: F401
        names.append("fa4")
    except ImportError:
        pass
    return names


@pytest.mark.parametrize("past,runs", [(0, False), (64, True)])
@pytest.mark.parametrize("name", ["torch_flash", "fa4"])
def test_kernel_equals_the_definition(gpu, record, name, past, runs):
    if name not in _kernels():
        pytest.skip("flash-attn-4 is not installed (bash bench/run_gpu_flash4.sh installs it)")
    backend = "flash_attention_4" if name == "fa4" else "sdpa"
    torch.manual_seed(0)
    key_pos, A = _random_layout(2, past, 3000, 0.75, runs, seed=past)
    key_pos = key_pos.to(DEVICE)
    B, K = key_pos.shape
    h, kvh, d = 28, 4, 128
    q = torch.randn(B, h, A, d, device=DEVICE, dtype=torch.bfloat16)
    k = torch.randn(B, kvh, K, d, device=DEVICE, dtype=torch.bfloat16)
    v = torch.randn(B, kvh, K, d, device=DEVICE, dtype=torch.bfloat16)
    scale = d ** -0.5
    chunks = ka.KeepChunks(key_pos, A, backend)
    got, _ = ka.keep_attention(None, q, k, v, chunks, scaling=scale)
    want = _masked_attention(q, k, v, key_pos, scale)
    q_pos = key_pos[:, -A:]
    allowed = (key_pos[:, None, :] >= 0) & (key_pos[:, None, :] <= q_pos[:, :, None])
    allowed |= (q_pos < 0)[:, :, None]
    sdpa = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=allowed[:, None], scale=scale,
                                                            enable_gqa=True).transpose(1, 2)
    valid = q_pos >= 0
    assert torch.isfinite(got).all()
    err = (got.float() - want)[valid].abs().max().item()
    sdpa_err = (sdpa.float() - want)[valid].abs().max().item()
    result = dict(kernel=name, past=past, runs=runs, max_err=err, sdpa_masked_err=sdpa_err, **chunks.work())
    record(result)
    assert err <= 2 * sdpa_err + 1e-3, result


def _inputs(batch: int, vocab: int):
    torch.manual_seed(batch)
    lengths = [3000, 2600, 2100][:batch]
    T = max(lengths)
    ids = torch.randint(10, min(vocab, 8000), (batch, T), device=DEVICE)
    mask = torch.zeros(batch, T, dtype=torch.long, device=DEVICE)
    for b, n in enumerate(lengths):
        mask[b, T - n:] = 1
    return dict(input_ids=ids.masked_fill(mask == 0, 0), attention_mask=mask)


def _gen(model, inputs):
    with torch.no_grad():
        return model.generate(**inputs, max_new_tokens=NEW, min_new_tokens=NEW, do_sample=False, output_logits=True,
                              return_dict_in_generate=True)


@pytest.mark.parametrize("name", ["qwen2-vl-check", "llava-check"])
@pytest.mark.parametrize("batch", [1, 3])
def test_keep_without_a_mask_equals_keep_with_it(gpu, record, monkeypatch, name, batch):
    from bench.common import build_model
    torch.manual_seed(0)
    model = build_model(name, DEVICE, torch.bfloat16, attn="sdpa", vision=False)
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    inputs = _inputs(batch, model.config.get_text_config().vocab_size)
    out = {}
    try:
        out["unmodified"] = _gen(model, inputs)
        model.set_attn_implementation("eager")
        out["eager"] = _gen(model, inputs)
        model.set_attn_implementation("sdpa")
        for mode in ("never", "always"):
            monkeypatch.setattr(ka, "MODE", mode)
            with dashvl.compress(model, method="dash", scope="all", ratio=0.75, layer=2, kv="keep") as h:
                out[mode] = _gen(model, inputs)
                out[mode, "halted"] = h.trace.halted.clone()
                out[mode, "graph"] = h._graphs.captures if h._graphs is not None else 0
    finally:
        dashvl.release_graphs(model)
        del model
        torch.cuda.empty_cache()
    diff = lambda a, b: (a.logits[0].float() - b.logits[0].float()).abs().max().item()  # noqa: E731
    gap = diff(out["unmodified"], out["eager"])
    result = dict(model=name, batch=batch, kernel_gap_sdpa_vs_eager=gap, graph_captures=out["always", "graph"],
                  same_halted=torch.equal(out["never", "halted"], out["always", "halted"]),
                  keep_fast_vs_masked_prefill_diff=diff(out["always"], out["never"]),
                  first_token_same=torch.equal(out["always"].sequences[:, -NEW], out["never"].sequences[:, -NEW]),
                  tokens_same=torch.equal(out["always"].sequences, out["never"].sequences))
    record(result)
    assert result["same_halted"] and result["first_token_same"], result
    assert result["keep_fast_vs_masked_prefill_diff"] <= max(2 * gap, 1e-3), result
