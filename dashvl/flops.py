"""Theoretical prefill FLOPs of the language model, unmodified and as a HaltTrace ran it.

Counts matrix multiplies (2 FLOPs per multiply-add): the attention projections, the causal QK^T and AV
products over the (query, key) pairs actually formed, the MLP and, for kv="keep", the halted tokens' key /
value projections. Norms, RoPE, softmax and the LM head (one token under generate) are left out: they are
small next to these and the same with and without halting.
"""
from __future__ import annotations

import torch

from .trace import HaltTrace

__all__ = ["layer_flops", "prefill_flops", "flops_speedup"]


def layer_flops(text_config, queries: int, pairs: int, extra_kv: int = 0) -> int:
    """FLOPs of one decoder layer for ``queries`` tokens forming ``pairs`` causal (query, key) pairs.

    ``extra_kv``: tokens whose keys / values are projected without being queries (kv="keep").
    """
    d = text_config.hidden_size
    heads = text_config.num_attention_heads
    kv_heads = getattr(text_config, "num_key_value_heads", None) or heads
    head_dim = getattr(text_config, "head_dim", None) or d // heads
    mlp = text_config.intermediate_size
    q_o = 2 * 2 * d * heads * head_dim           # q_proj and o_proj per token
    k_v = 2 * 2 * d * kv_heads * head_dim        # k_proj and v_proj per token
    attn = 2 * 2 * heads * head_dim              # QK^T and AV per (query, key) pair
    mlp_flops = 2 * 3 * d * mlp                  # gate, up, down per token
    return queries * (q_o + k_v + mlp_flops) + pairs * attn + extra_kv * k_v


def prefill_flops(text_config, trace: HaltTrace, row: int = 0) -> tuple[int, int]:
    """``(unmodified, with DASH)`` LLM prefill FLOPs of one row of a trace."""
    real = trace.real[row]
    n = int(real.sum())
    full_pairs = n * (n + 1) // 2
    unmodified = trace.num_layers * layer_flops(text_config, n, full_pairs)
    active = trace.active[row]
    a = int(active.sum())
    if trace.kv == "drop":
        pairs, extra = a * (a + 1) // 2, 0
    else:  # each active query attends to every real token at or before it
        keys_before = torch.cumsum(real.long(), 0)
        pairs, extra = int(keys_before[active].sum()), n - a
    below = (trace.layer + 1) * layer_flops(text_config, n, full_pairs)
    above = (trace.num_layers - trace.layer - 1) * layer_flops(text_config, a, pairs, extra)
    return unmodified, below + above


def flops_speedup(text_config, trace: HaltTrace, row: int = 0) -> float:
    """The speedup the FLOPs allow: unmodified / DASH prefill FLOPs."""
    full, dash = prefill_flops(text_config, trace, row)
    return full / dash


def vision_flops(blocks, trace) -> tuple[int, int]:
    """``(unmodified, with halting)`` FLOPs of a vision tower's blocks for one ``VisionTrace``.

    Per patch: 2 FLOPs per weight of every linear layer in a block (qkv, projection, MLP); per pair of
    patches attending to each other within an attention segment (a frame, or a batched image): 4 · width.
    Qwen2.5-VL's windowed blocks are counted as full-frame attention, an upper bound on both sides.
    """
    block = blocks[0]
    per_token = 2 * sum(m.weight.numel() for m in block.modules() if isinstance(m, torch.nn.Linear))
    width = next(m for m in block.modules() if isinstance(m, torch.nn.Linear)).in_features
    if trace.starts is None:  # batched: one segment per row
        full_segments = [trace.active.shape[1]] * trace.active.shape[0]
        active_segments = trace.active.sum(1).tolist()
    else:
        full_segments, active_segments = [], []
        for (t, h, w), start in zip(trace.grids, trace.starts):
            for f in range(t):
                frame = trace.active[start + f * h * w:start + (f + 1) * h * w]
                full_segments.append(h * w)
                active_segments.append(int(frame.sum()))

    def cost(segments):
        return sum(n * per_token + 4 * width * n * n for n in segments)

    depth, above = trace.num_blocks, trace.num_blocks - trace.layer - 1
    unmodified = depth * cost(full_segments)
    return unmodified, (depth - above) * cost(full_segments) + above * cost(active_segments)
