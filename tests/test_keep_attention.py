"""kv="keep" without a mask (``dashvl.engine.keep_attention``): rank-ordered keys, chunks of queries, a prefix call
and a causal local call merged by log-sum-exp. On the CPU it runs with the float32 reference kernel (MODE "always"
for SDPA and eager; always for the flash backends, whose emulated kernel takes no mask); the real kernels are
checked on the H200 (tests/gpu/test_keep_kernels.py). A small CHUNK here, so that every prompt has many chunks,
prefix-less chunks and chunks straddling halted runs."""
import pytest
import torch

import dashvl
from dashvl.engine import keep_attention as ka
from tests import test_generation, test_reference
from tests.helpers import assert_same_generation, dash_reference, generate, make_inputs

ATOL = 2e-4


@pytest.fixture
def fast_keep(monkeypatch):
    """The fast path wherever it can be exact, with tiny chunks; counts the layer calls it serves."""
    monkeypatch.setattr(ka, "MODE", "always")
    monkeypatch.setattr(ka, "CHUNK", 4)
    monkeypatch.setattr(ka, "SPAN", 16)
    calls = []
    real = ka.MathKernel.varlen

    def counted(self, *args, **kwargs):
        calls.append(args[0].shape[0])
        return real(self, *args, **kwargs)

    monkeypatch.setattr(ka.MathKernel, "varlen", counted)
    return calls


def _masked_attention(query, key, value, key_pos, scale):
    """The definition: an active query (the last A key slots) sees every valid key at a position up to its own."""
    B, h, A, d = query.shape
    k = key.repeat_interleave(h // key.shape[1], 1).float()
    v = value.repeat_interleave(h // value.shape[1], 1).float()
    q_pos = key_pos[:, -A:]
    allowed = (key_pos[:, None, :] >= 0) & (key_pos[:, None, :] <= q_pos[:, :, None])
    scores = torch.einsum("bhqd,bhkd->bhqk", query.float(), k) * scale
    scores = scores.masked_fill(~allowed[:, None], float("-inf"))
    out = torch.einsum("bhqk,bhkd->bqhd", torch.softmax(scores, -1), v)
    return torch.where((q_pos >= 0)[:, :, None, None], out, 0.0)


def _random_layout(B, past, T, ratio, runs: bool, seed):
    """key_pos [B, past + H + A] as the engine lays out a kv="keep" layer: earlier turns, halted, active (fillers
    last, -1); left padding in all but the first row."""
    g = torch.Generator().manual_seed(seed)
    halted_rows, active_rows = [], []
    for b in range(B):
        pad = 0 if b == 0 else int(torch.randint(1, T // 3, (1,), generator=g))
        pos = torch.arange(past + pad, past + T)
        n = len(pos)
        if runs:  # one long halted run, as Δ halts an image's background, plus scattered ones
            start = int(torch.randint(0, n // 2, (1,), generator=g))
            halted = torch.zeros(n, dtype=torch.bool)
            halted[start:start + n // 3] = True
            halted |= torch.rand(n, generator=g) < ratio / 2
        else:
            halted = torch.rand(n, generator=g) < ratio
        halted[-1] = False
        halted_rows.append(pos[halted])
        active_rows.append(pos[~halted])
    H, A = max(map(len, halted_rows)), max(map(len, active_rows))
    pad_to = lambda rows, w: torch.stack([torch.cat([r, r.new_full((w - len(r),), -1)]) for r in rows])  # noqa: E731
    past_pos = torch.arange(past).expand(B, past)
    return torch.cat([past_pos, pad_to(halted_rows, H), pad_to(active_rows, A)], 1), A


@pytest.mark.parametrize("chunk,span", [(4, 16), (16, 32), (16, 1024), (128, 1024)])
@pytest.mark.parametrize("past,runs", [(0, False), (9, False), (0, True)])
def test_chunks_equal_the_masked_definition(chunk, span, past, runs):
    torch.manual_seed(0)
    key_pos, A = _random_layout(3, past, 90, 0.6, runs, seed=chunk + past)
    B, K = key_pos.shape
    h, kvh, d = 6, 2, 8
    query, key, value = torch.randn(B, h, A, d), torch.randn(B, kvh, K, d), torch.randn(B, kvh, K, d)
    chunks = ka.KeepChunks(key_pos, A, "sdpa", chunk=chunk, span=span)
    got, _ = ka.keep_attention(None, query, key, value, chunks, scaling=d ** -0.5)
    valid = (key_pos[:, -A:] >= 0)[:, :, None, None]
    assert torch.isfinite(got).all()  # fillers too: they feed the next layer's keys
    torch.testing.assert_close(torch.where(valid, got, 0.0), _masked_attention(query, key, value, key_pos, d ** -0.5),
                               atol=1e-5, rtol=0)
    work = chunks.work()
    assert work["queries"] == B * A and work["chunks"] == B * (-(-A // chunk) + -(-K // span))
    assert int(chunks.cu_loc.diff().max()) <= span


def test_chunks_read_prefixes_and_local_blocks():
    # 10 active tokens, 50 halted, 10 active; chunks of 8 queries in segments of 32 ranks
    pos = torch.arange(70)
    halted = (pos >= 10) & (pos < 60)
    key_pos = torch.cat([pos[halted], pos[~halted]])[None]
    chunks = ka.KeepChunks(key_pos, 20, "sdpa", chunk=8, span=32)
    used = chunks.cu_q.diff() > 0
    # segment 0 (ranks 0-31): the first 10 queries, in chunks of 8 and 2; segment 1 (32-63): ranks 60-63;
    # segment 2 (64-69): ranks 64-69. Each chunk's prefix: the keys ranked before its first query.
    assert chunks.cu_q.diff()[used].tolist() == [8, 2, 4, 6]
    assert chunks.k_used[used].tolist() == [0, 8, 60, 64]
    assert chunks.cu_loc.diff()[used].tolist() == [8, 2, 4, 6]
    assert chunks.no_prefix.tolist() == [True] * 8 + [False] * 12


@pytest.mark.parametrize("family", ["qwen2_vl", "llava", "llama"])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("batch", [1, 3])
def test_keep_without_a_mask_matches_reference(fast_keep, family, attn, batch):
    test_reference._check_against_reference(family, attn, batch, "keep")
    assert fast_keep, "keep_attention did not run"


def test_keep_without_a_mask_at_other_layers_and_ratios(fast_keep):
    test_reference._check_against_reference("qwen2_vl", "sdpa", 3, "keep", ratio=0.9, layer=0)
    test_reference._check_against_reference("qwen2_vl", "sdpa", 3, "keep", ratio=0.25, layer=2, images=2)
    assert fast_keep


@pytest.mark.parametrize("family", ["qwen2_vl", "llava"])
def test_keep_without_a_mask_second_turn_and_beams(fast_keep, family):
    test_generation.test_second_turn_reuses_the_cache(family, "keep")
    test_generation.test_beam_search_scores_match_reference(family, "keep")
    test_generation.test_beam_search_on_a_padded_batch_matches_reference("keep")
    test_generation.test_compressing_between_turns_keeps_the_first_turns_padding_masked("keep")
    assert fast_keep


@pytest.fixture
def emulated_graphs(monkeypatch):
    from dashvl.engine import graphs
    monkeypatch.setattr(graphs, "EMULATE", True)
    graphs._BANKS.clear()
    return graphs


@pytest.mark.parametrize("family", ["qwen2_vl", "llava", "llama"])
@pytest.mark.parametrize("batch", [1, 3])
def test_keep_without_a_mask_on_the_graph_path(fast_keep, emulated_graphs, family, batch):
    """The graph path builds the chunking inside the graph from its static key positions (bucketed widths,
    filler slots); replays (the second prompt) reuse it."""
    from tests.helpers import build
    model, _ = build(family)
    inputs = make_inputs(family, batch)
    halted, tokens, logits = dash_reference(model, inputs, 1, "keep", 0.5)
    with dashvl.compress(model, method="dash", ratio=0.5, layer=1, kv="keep") as h:
        out = generate(model, inputs)
        again = generate(model, inputs)
        assert h._graphs.captures == 1 and h._graphs.replays == 1
    assert torch.equal(h.trace.halted, halted)
    assert_same_generation(out, inputs, tokens, logits, ATOL)
    assert_same_generation(again, inputs, tokens, logits, ATOL)
    assert fast_keep


def test_auto_mode_keeps_masks_on_the_cpu(monkeypatch):
    """On the CPU in float32 the masked SDPA kernel serves keep (``MODE="auto"``): keep_attention stays out."""
    called = []
    monkeypatch.setattr(ka.KeepChunks, "__init__", lambda *a, **k: called.append(1))
    test_reference._check_against_reference("llama", "sdpa", 1, "keep")
    assert not called
    assert ka.applies("sdpa", torch.device("cuda"), torch.bfloat16, 16384, False, False)
    assert ka.applies("sdpa", torch.device("cuda"), torch.bfloat16, 4160, False, False)
    assert not ka.applies("sdpa", torch.device("cuda"), torch.bfloat16, 1088, False, False)
    assert not ka.applies("sdpa", torch.device("cuda"), torch.float32, 16384, False, False)
    assert not ka.applies("eager", torch.device("cuda"), torch.bfloat16, 16384, False, False)
    assert not ka.applies("sdpa", torch.device("cuda"), torch.bfloat16, 16384, True, False)  # windows: masks
    assert ka.applies("flash_attention_4", torch.device("cuda"), torch.bfloat16, 64, True, False)
    assert not ka.applies("flash_attention_4", torch.device("cuda"), torch.bfloat16, 64, False, True)


def test_the_attention_config_is_restored(fast_keep):
    from tests.helpers import build
    model, _ = build("llama")
    config = model.config.get_text_config(decoder=True)
    with dashvl.compress(model, ratio=0.5, layer=1, kv="keep"):
        generate(model, make_inputs("llama", 1))
        assert config._attn_implementation == "sdpa"
    assert fast_keep


@pytest.mark.parametrize("family", ["qwen2_vl", "llava", "llama"])
@pytest.mark.parametrize("batch", [1, 3])
def test_keep_on_flash_matches_reference(fast_keep, family, batch):
    """The flash backends take no mask: kv="keep" runs through keep_attention there (the layers below l_s and the
    decode steps through the emulated kernel)."""
    from tests.test_flash_contract import FLASH, _flash_twin, emulated_flash
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
    for backend in FLASH:
        ALL_ATTENTION_FUNCTIONS[backend] = emulated_flash
        try:
            model, ref_model = _flash_twin(family, backend)
            inputs = make_inputs(family, batch)
            halted, tokens, logits = dash_reference(ref_model, inputs, 1, "keep", 0.5)
            fast_keep.clear()
            with dashvl.compress(model, method="dash", ratio=0.5, layer=1, kv="keep") as h:
                out = generate(model, inputs)
            assert torch.equal(h.trace.halted, halted)
            assert_same_generation(out, inputs, tokens, logits, ATOL)
            assert fast_keep, backend
        finally:
            del ALL_ATTENTION_FUNCTIONS[backend]


def test_keep_on_flash_refused_when_turned_off(monkeypatch):
    from dashvl.tiny import tiny_decoder
    monkeypatch.setattr(ka, "MODE", "never")
    model, _ = tiny_decoder("llama", attn="sdpa")
    model.config._attn_implementation = "flash_attention_4"
    with pytest.raises(ValueError, match=r"kv='keep' on flash_attention_4 needs dashvl's keep attention, which "
                                         r"dashvl.engine.keep_attention.MODE='never' turns off"):
        dashvl.compress(model, kv="keep")
