"""The flash attention path (flash_attention_2, _3 and _4), with FlashAttention's contract emulated in plain torch.

transformers serves the three through one integration (``flash_attention_forward``, ``flash_attention_mask``):
the emulated kernel is registered under the name being tested, and everything else is transformers' own.

flash-attn cannot be installed here (no GPU, no wheels), so the kernel is replaced by a slow function with
its semantics as transformers uses them: a 2-D key-padding mask (queries = the last q_len mask columns),
causal attention aligned bottom-right over each row's valid tokens, zeros for padded queries. What is
tested is what dashvl hands to that kernel: gathered tokens, 2-D masks or None, no position_ids.
"""
import pytest
import torch
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

import dashvl
from dashvl.tiny import tiny_decoder, tiny_llava, tiny_qwen2_vl
from tests.helpers import assert_same_generation, build, generate, make_inputs, Reference, reference_halted, visual_kinds


def emulated_flash(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """[B, H, Q, hd] queries against [B, KV, K, hd] keys -> ([B, Q, H, hd], None)."""
    B, H, Q, hd = query.shape
    K = key.shape[2]
    key = key.repeat_interleave(H // key.shape[1], dim=1)
    value = value.repeat_interleave(H // value.shape[1], dim=1)
    ids = kwargs.get("position_ids")
    if attention_mask is None and ids is not None and Q > 1:  # transformers then reads ids for packing
        assert not (ids.diff(dim=-1) != 1).any(), "gapped position_ids would take flash's packed-sequence path"
    out = torch.zeros(B, Q, H, hd, dtype=query.dtype)
    for b in range(B):
        k_ok = attention_mask[b].bool() if attention_mask is not None else torch.ones(K, dtype=torch.bool)
        assert k_ok.shape == (K,), "flash takes a 2-D [batch, keys] padding mask"
        q_ok = k_ok[-Q:]
        kidx, qidx = torch.where(k_ok)[0], torch.where(q_ok)[0]
        nq, nk = len(qidx), len(kidx)
        allowed = torch.arange(nk)[None, :] <= torch.arange(nq)[:, None] + (nk - nq)
        o = torch.nn.functional.scaled_dot_product_attention(
            query[b][:, qidx], key[b][:, kidx], value[b][:, kidx], attn_mask=allowed, scale=scaling)
        out[b, qidx] = o.transpose(0, 1)
    return out, None


FLASH = ["flash_attention_2", "flash_attention_3", "flash_attention_4"]


@pytest.fixture(params=FLASH)
def flash_emulated(request):
    """The backend's name, with the emulated kernel registered under it."""
    name = request.param
    ALL_ATTENTION_FUNCTIONS[name] = emulated_flash
    yield name
    del ALL_ATTENTION_FUNCTIONS[name]  # the local override only: the stock function is back


def _flash_twin(family, backend):
    """A second copy of the cached sdpa test model (same seed, same weights) switched to ``backend``."""
    builders = {"qwen2_vl": tiny_qwen2_vl, "llava": tiny_llava, "llama": tiny_decoder}
    model, _ = builders[family]() if family != "llama" else builders[family]("llama")
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = model.config.get_text_config().pad_token_id
    model.config.get_text_config(decoder=True)._attn_implementation = backend
    ref_model, _ = build(family)
    for (k, v), (_, w) in zip(model.state_dict().items(), ref_model.state_dict().items()):
        assert torch.equal(v, w), k
    return model, ref_model


@pytest.mark.parametrize("family", ["qwen2_vl", "llava", "llama"])
@pytest.mark.parametrize("batch", [1, 3])
def test_drop_on_flash_matches_reference(flash_emulated, family, batch):
    model, ref_model = _flash_twin(family, flash_emulated)
    inputs = make_inputs(family, batch)
    unmodified = generate(model, inputs)
    # the emulated kernel reproduces the sdpa model: the contract is right before dashvl is involved
    assert torch.equal(unmodified.sequences, generate(ref_model, inputs).sequences)

    ref = Reference(ref_model, 1, "drop")
    real = inputs["attention_mask"].bool()
    halted = reference_halted(ref.scores(inputs), real, visual_kinds(model, inputs["input_ids"]), 0.5)
    tokens, logits = ref.greedy(inputs, halted)
    with dashvl.compress(model, method="dash", ratio=0.5, layer=1) as h:
        out = generate(model, inputs)
        with dashvl.compress(model, method="dash", ratio=0.0, layer=1):
            zero = generate(model, inputs)
    assert torch.equal(h.trace.halted, halted)
    assert_same_generation(out, inputs, tokens, logits)
    assert torch.equal(zero.sequences, unmodified.sequences)


def test_flash_mask_functions_are_untouched():
    # dashvl builds its own masks for the halted layers and never registers mask functions
    for name in FLASH:
        assert ALL_MASK_ATTENTION_FUNCTIONS[name] is ALL_MASK_ATTENTION_FUNCTIONS["flash_attention_2"]
