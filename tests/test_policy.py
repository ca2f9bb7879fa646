"""The halting rule's pure functions against brute force on constructed inputs."""
import pytest
import torch

from dashvl import DashConfig
from dashvl.policy import (KIND_IMAGE, KIND_PAD, KIND_TEXT, compact_index, delta_scores, eligible_tokens,
                           select_halted, token_kinds)


def test_select_halted_lowest_scores_with_ties_by_position():
    scores = torch.tensor([[3.0, 1.0, 1.0, 0.5, 2.0, 1.0]])
    eligible = torch.tensor([[True, True, True, False, True, True]])
    got = select_halted(scores, eligible, torch.tensor([3]))
    # 0.5 is not eligible; among the 1.0 ties the earliest two come first, then the third 1.0
    assert got.tolist() == [[False, True, True, False, False, True]]
    got = select_halted(scores, eligible, torch.tensor([2]))
    assert got.tolist() == [[False, True, True, False, False, False]]


def test_select_halted_matches_brute_force():
    g = torch.Generator().manual_seed(0)
    for _ in range(50):
        B, T = 3, 9
        scores = torch.randint(0, 4, (B, T), generator=g).float()  # many ties
        eligible = torch.rand(B, T, generator=g) > 0.3
        n = torch.tensor([int(torch.randint(0, int(e.sum()) + 1, (1,), generator=g)) for e in eligible])
        got = select_halted(scores, eligible, n)
        for b in range(B):
            cand = sorted((float(scores[b, t]), t) for t in range(T) if eligible[b, t])
            want = {t for _, t in cand[: int(n[b])]}
            assert set(torch.where(got[b])[0].tolist()) == want


def test_eligibility_scope_and_protection_with_padding():
    ids = torch.tensor([[0, 0, 5, 9, 9, 6, 7], [5, 9, 6, 7, 8, 0, 0]])
    real = torch.tensor([[0, 0, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 0, 0]]).bool()
    kinds = token_kinds(ids, real, image_token_id=9, video_token_id=None)
    assert kinds.tolist() == [[KIND_PAD] * 2 + [KIND_TEXT, KIND_IMAGE, KIND_IMAGE, KIND_TEXT, KIND_TEXT],
                              [KIND_TEXT, KIND_IMAGE, KIND_TEXT, KIND_TEXT, KIND_TEXT, KIND_PAD, KIND_PAD]]
    # the last 2 *real* tokens are protected, also under right padding
    assert eligible_tokens(kinds, "all", 2).int().tolist() == [[0, 0, 1, 1, 1, 0, 0], [1, 1, 1, 0, 0, 0, 0]]
    assert eligible_tokens(kinds, "vision", 1).int().tolist() == [[0, 0, 0, 1, 1, 0, 0], [0, 1, 0, 0, 0, 0, 0]]
    assert eligible_tokens(kinds, "text", 1).int().tolist() == [[0, 0, 1, 0, 0, 1, 0], [1, 0, 1, 1, 0, 0, 0]]


def test_compact_index_packs_in_order_with_trailing_fillers():
    keep = torch.tensor([[1, 0, 1, 1, 0], [0, 1, 0, 0, 1]]).bool()
    index, valid = compact_index(keep, 3)
    assert valid.tolist() == [[True, True, True], [True, True, False]]
    assert index[0].tolist() == [0, 2, 3]
    assert index[1, :2].tolist() == [1, 4] and not keep[1, index[1, 2]]
    for row in index:
        assert len(set(row.tolist())) == 3


def test_delta_is_float32_l2_norm():
    u = torch.randn(2, 5, 8, dtype=torch.bfloat16)
    got = delta_scores(u)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, u.float().norm(dim=-1))


@pytest.mark.parametrize("ratio,n,k", [(0.5, 7, 3), (0.29, 100, 29), (0.7, 10, 7), (0.0, 50, 0), (0.999, 3, 2)])
def test_num_halted_is_floor(ratio, n, k):
    assert DashConfig(ratio=ratio).num_halted(n) == k


def test_config_is_frozen_and_resolves_layers():
    cfg = DashConfig(ratio=0.5, layer=0.4)
    with pytest.raises(Exception):
        cfg.ratio = 0.1
    assert cfg.resolve_layer(28) == 11 and DashConfig(layer=2).resolve_layer(28) == 2
    with pytest.raises(ValueError, match="at least 2 decoder layers"):
        cfg.resolve_layer(1)


def _window_inputs():
    torch.manual_seed(0)
    q, k = torch.randn(2, 4, 3, 8), torch.randn(2, 2, 10, 8)
    return q, k, torch.tensor([[7, 8, 9]] * 2), torch.ones(2, 10, dtype=torch.bool)


def test_window_scores_refuses_unknown_reductions():
    from dashvl.policy import window_scores
    q, k, pos, real = _window_inputs()
    with pytest.raises(ValueError, match="heads must be 'mean' or 'max'; got 'median'"):
        window_scores(q, k, pos, real, 0.35, 3, heads="median")
    with pytest.raises(ValueError, match="kernel must be an odd int"):
        window_scores(q, k, pos, real, 0.35, 4)


def test_window_scores_heads_max_is_the_largest_share():
    """heads="max" with kernel 1: the largest over heads of each head's votes divided by that head's total."""
    from dashvl.policy import window_scores
    q, k, pos, real = _window_inputs()
    mean = window_scores(q, k, pos, real, 0.35, 1)
    top = window_scores(q, k, pos, real, 0.35, 1, heads="max")
    kk = k.repeat_interleave(2, dim=1)
    w = torch.softmax(((q @ kk.transpose(-1, -2)) * 0.35).masked_fill(
        torch.arange(10)[None, None, None] > pos[:, None, :, None], float("-inf")), -1).sum(2)  # [B, H, T]
    assert torch.allclose(mean, w.mean(1), atol=1e-6)
    assert torch.allclose(top, (w / w.sum(-1, keepdim=True)).amax(1), atol=1e-6)
