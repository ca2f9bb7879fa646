"""kv="keep" on fast attention kernels: the halted layers' attention without an explicit mask.

Under kv="keep" an active query sees every key (active or frozen) at a position up to its own. In the cache
slot order ([earlier turns | halted tokens | active tokens]) that is a staircase no fast kernel takes, so SDPA
would leave its flash kernel for a masked one (about 66% of keep's FLOPs limit on the H200, issue 16) and
FlashAttention could not serve it at all. In *rank* order (every valid key sorted by position) a query of rank r
sees exactly the keys of rank 0..r. So the active query slots are cut into chunks of at most ``CHUNK``
consecutive ones spanning fewer than ``SPAN`` ranks, and each chunk's attention is two unmasked-or-causal varlen
calls merged by their log-sum-exp:

- **prefix**: the chunk's queries against the keys ranked before its first query, unmasked; every chunk reads a
  prefix of its row's rank-ordered keys in place (varlen offsets that repeat, with ``seqused_k``);
- **local**: the keys from the chunk's first query's rank to its last's, causal; the rows of that block that are
  not active queries (halted tokens' ranks) are filled with zero queries and thrown away.

Per layer this costs one gather of the keys/values into rank order, two kernel calls and an elementwise merge.
Extra attention work over the ideal (``A·N/2`` query-key pairs): the local blocks, about ``A · CHUNK/(1-ρ)²/2``.
The chunking (``KeepChunks``) is worked out once per call on the device, shared by every halted layer; its
shapes depend only on (batch, key slots, query slots), so it needs no host sync and the graph path captures it.

The halted layers reach ``keep_attention`` through transformers' attention interface: the runner switches the
attention config to ``NAME`` for the halted layers' loop only (``switched``), and hands them a ``KeepChunks`` as
their attention mask.
"""
from __future__ import annotations

import contextlib

import torch

__all__ = ["NAME", "CHUNK", "SPAN", "MODE", "MIN_TOKENS", "KeepChunks", "keep_attention", "applies", "capturable",
           "kernel_for", "switched", "register"]

NAME = "dashvl_keep"

# Queries per chunk: the kernels' 128-row query tiles, so the prefix call's tiles are full. The local blocks cost
# about CHUNK/(1-ρ)² / 2 pairs per query. 128 and 256 timed the same on the H200.
CHUNK = 128
# Ranks per segment: no chunk spans more, so its local block (causal over its span, the halted ranks inside it as
# zero queries) stays small however long a halted run is, and the local call's bound is static (a CUDA graph).
SPAN = 1024

# "auto": the fast path on flash backends always (they take no mask), on SDPA on CUDA in half precision from
# MIN_TOKENS prompt tokens on; "always": wherever it can be exact (tests: the CPU runs it with the reference
# kernel); "never": masks only. Measured on the H200 at Qwen2-VL-7B shapes, both paths with their CUDA graphs
# (bench/RESULTS.md): at 1,088 tokens SDPA's masked kernel is ahead (keep 0.75: 1.59x against 1.47x), at 4,160 they
# tie at rho 0.75 and the fast path leads at 0.5 (1.43x against 1.37x), at 16,448 it leads (2.46x against 1.95x).
MODE = "auto"
MIN_TOKENS = 4096


def _flash_kernel(device: torch.device, dtype) -> bool:
    """Whether a FlashAttention kernel serves this device and dtype (else the float32 reference does)."""
    return device.type == "cuda" and dtype in (torch.float16, torch.bfloat16)


def applies(backend: str, device: torch.device, dtype, length: int, windowed: bool, blocks: bool) -> bool:
    """Whether a kv="keep" prompt of ``length`` tokens runs its halted layers through ``keep_attention``.
    ``windowed``: the halted layers are of several kinds (sliding windows); ``blocks``: bidirectional image
    blocks (Gemma 3). Flash backends serve windowed layers only within the window (``checks.check_window``)."""
    if MODE == "never" or blocks:
        return False
    if backend.startswith("flash"):
        return True
    if windowed or backend not in ("sdpa", "eager"):
        return False
    if MODE == "always":
        return True
    return backend == "sdpa" and _flash_kernel(device, dtype) and length >= MIN_TOKENS


def capturable(device: torch.device, dtype) -> bool:
    """Whether the kernel serving this device and dtype can run inside a CUDA graph (the float32 reference reads
    offsets on the host; off CUDA the graph path is only ever emulated)."""
    return device.type != "cuda" or _flash_kernel(device, dtype)


class KeepChunks:
    """The chunking of one call's kv="keep" attention, shared by every halted layer. Built on the device from the
    key positions alone, with shapes that depend only on (B, K, A): no host sync, and the graph path captures it.

    Key slots (K per row) are the layer's keys after its cache update: [earlier turns | halted | active], with
    ``key_pos`` [B, K] their sequence positions (-1: unused); the active queries are the last A slots. Ranks index
    a row's keys by position, unused ones last (in slot order). Every query slot takes part, fillers included
    (their ranks come after every valid key's, so they see only finite values; their outputs are thrown away).
    Chunks: the rank axis is cut into segments of ``span`` ranks, and each segment's queries into groups of
    ``chunk``; so a chunk's local block spans fewer than ``span`` ranks, and a row has at most
    M = ceil(A / chunk) + ceil(K / span) chunks (the unused ones empty).

    Attributes (device tensors; int32 where a kernel reads them):
        backend: the attention implementation the model was loaded with (picks the kernel: ``kernel_for``).
        key_b, key_slot: long [B·K], the key slot of each (row, rank): the rank-ordered keys are
            ``keys.transpose(1, 2)[key_b, key_slot]`` ([B·K, kv_heads, head_dim], row b from b·K).
        cu_q: int32 [B·M+1], the prefix call's query offsets per chunk (the query slots, row-major).
        cu_k, k_used: int32 [B·M+1] / [B·M]: chunk i's prefix is the rank-ordered keys [cu_k[i], cu_k[i] + k_used[i])
            (its row's keys ranked before its first query).
        loc_index: long [B·K], the rank-ordered keys of every chunk's local block (ranks from its first query's to
            its last's) in turn, then padding; cu_loc: int32 [B·M+1] their offsets.
        q_loc: long [B·A], each query's row in the local blocks. no_prefix: bool [B·A], its chunk has no prefix.
        max_q, max_k, max_loc: bounds of a chunk, a prefix and a local block (host ints: chunk, K, span).
    """

    def __init__(self, key_pos: torch.Tensor, num_queries: int, backend: str, chunk: int | None = None,
                 span: int | None = None):
        chunk, span = chunk or CHUNK, span or SPAN
        device, (B, K), A = key_pos.device, key_pos.shape, num_queries
        self.backend = backend
        unused_last = torch.where(key_pos >= 0, key_pos, torch.iinfo(torch.long).max)
        order = torch.sort(unused_last, dim=1, stable=True).indices  # [B, K]
        rank = torch.empty_like(order).scatter_(1, order, torch.arange(K, device=device).expand(B, K))
        q_rank = rank[:, K - A:]  # [B, A], increasing along each row
        S = -(-K // span)
        M = -(-A // chunk) + S
        segment = q_rank // span
        counts = torch.zeros(B, S, dtype=torch.long, device=device).scatter_add_(1, segment, torch.ones_like(segment))
        groups = -(-counts // chunk)
        exclusive = lambda x: torch.cumsum(x, 1) - x  # noqa: E731
        rows = torch.arange(B, device=device)
        in_segment = torch.arange(A, device=device)[None] - exclusive(counts).gather(1, segment)
        chunk_of = (rows[:, None] * M + exclusive(groups).gather(1, segment) + in_segment // chunk).reshape(-1)
        flat_rank = q_rank.reshape(-1)
        n = B * M
        size = torch.zeros(n, dtype=torch.long, device=device).scatter_add_(0, chunk_of, torch.ones_like(chunk_of))
        first = torch.full((n,), K, dtype=torch.long, device=device).scatter_reduce_(0, chunk_of, flat_rank, "amin")
        last = torch.full((n,), -1, dtype=torch.long, device=device).scatter_reduce_(0, chunk_of, flat_rank, "amax")
        used = size > 0
        first = torch.where(used, first, 0)
        loc_len = torch.where(used, last - first + 1, 0)
        i32 = torch.int32
        zero = torch.zeros(1, dtype=torch.long, device=device)
        self.key_b, self.key_slot = rows.repeat_interleave(K), order.reshape(-1)
        self.cu_q = torch.cat([zero, torch.cumsum(size, 0)]).to(i32)
        self.k_used = first.to(i32)
        self.cu_k = torch.cat([(rows * K).repeat_interleave(M), zero + B * K]).to(i32)
        cu_loc = torch.cat([zero, torch.cumsum(loc_len, 0)])
        self.cu_loc = cu_loc.to(i32)
        self.q_loc = cu_loc[chunk_of] + flat_rank - first[chunk_of]
        self.no_prefix = first[chunk_of] == 0
        at = torch.arange(B * K, device=device)
        owner = torch.searchsorted(cu_loc[1:], at, right=True).clamp(max=n - 1)  # the local block of each row
        self.loc_index = ((owner // M) * K + first[owner] + at - cu_loc[owner]).clamp(0, B * K - 1)
        self.max_q, self.max_k, self.max_loc = chunk, K, min(span, K)
        self.num_chunks = n

    def work(self) -> dict:
        """Query-key pairs each part computes (host copies: for the benchmark's accounting and tests)."""
        counts = self.cu_q.diff().long().cpu()
        loc = self.cu_loc.diff().long().cpu()
        return {"prefix": int((counts * self.k_used.long().cpu()).sum()), "local": int((loc * (loc + 1) // 2).sum()),
                "queries": int(counts.sum()), "chunks": self.num_chunks}


# ----------------------------------------------------------------- kernels

class MathKernel:
    """The reference: float32 scores, any device. Serves the CPU (tests) and flash backends emulated there."""

    @staticmethod
    def _attend(q, k, v, scale, causal):
        """q [n, h, d], k/v [m, kv_heads, d] -> out [n, h, d], lse float32 [h, n]."""
        h = q.shape[1]
        k = k.repeat_interleave(h // k.shape[1], dim=1)
        v = v.repeat_interleave(h // v.shape[1], dim=1)
        scores = torch.einsum("nhd,mhd->hnm", q.float(), k.float()) * scale
        if causal:
            n, m = q.shape[0], k.shape[0]
            scores = scores.masked_fill(~torch.ones(n, m, dtype=torch.bool, device=q.device).tril(m - n), float("-inf"))
        lse = torch.logsumexp(scores, -1)
        out = torch.einsum("hnm,mhd->nhd", torch.softmax(scores, -1), v.float()) if k.shape[0] else \
            q.new_zeros(q.shape, dtype=torch.float32)
        return out.to(q.dtype), lse

    def varlen(self, q, k, v, cu_q, cu_k, used_k, max_q, max_k, scale, causal):
        """FlashAttention's varlen contract: sequence i's queries q[cu_q[i]:cu_q[i+1]] against keys
        k[cu_k[i] : cu_k[i] + used_k[i]] (``used_k`` None: cu_k[i+1] - cu_k[i]); causal aligned bottom-right.
        Returns out [total_q, h, d], lse float32 [h, total_q] (-inf for a query with no key)."""
        out = torch.zeros_like(q)
        lse = torch.full((q.shape[1], q.shape[0]), float("-inf"), device=q.device)
        cq, ck = cu_q.tolist(), cu_k.tolist()
        used = used_k.tolist() if used_k is not None else [b - a for a, b in zip(ck[:-1], ck[1:])]
        for i in range(len(cq) - 1):
            if cq[i + 1] > cq[i] and used[i]:
                o, s = self._attend(q[cq[i]:cq[i + 1]], k[ck[i]:ck[i] + used[i]], v[ck[i]:ck[i] + used[i]],
                                    scale, causal)
                out[cq[i]:cq[i + 1]], lse[:, cq[i]:cq[i + 1]] = o, s
        return out, lse


class TorchFlashKernel:
    """torch's own FlashAttention-2 (``aten._flash_attention_forward``, varlen, CUDA, fp16/bf16): what SDPA runs
    unmasked. Reads each chunk's prefix in place: offsets ``cu_k`` need not increase when ``seqused_k`` is given
    (each sequence reads k[cu_k[i] : cu_k[i] + seqused_k[i]]); checked on the H200 (torch 2.11:
    tests/gpu/results/keep_kernels.json)."""

    def varlen(self, q, k, v, cu_q, cu_k, used_k, max_q, max_k, scale, causal):
        out, lse = torch.ops.aten._flash_attention_forward(
            q, k, v, cu_q, cu_k, max_q, max_k, 0.0, causal, False, scale=scale, seqused_k=used_k)[:2]
        return out, _heads_first(lse, q)


class FlashAttention4Kernel:
    """FlashAttention 4's CuTe kernels (``flash_attn.cute.flash_attn_varlen_func``), for
    attn_implementation="flash_attention_4". Its ``seqused_k`` with repeating ``cu_seqlens_k`` reads the prefixes
    in place too (flash-attn-4 4.0.0b36 on the H200: tests/gpu/results/keep_kernels_fa4.json)."""

    def __init__(self):
        from flash_attn.cute import flash_attn_varlen_func
        self._fn = flash_attn_varlen_func

    def varlen(self, q, k, v, cu_q, cu_k, used_k, max_q, max_k, scale, causal):
        kw = {"seqused_k": used_k} if used_k is not None else {}
        out, lse = self._fn(q, k, v, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, max_seqlen_q=max_q, max_seqlen_k=max_k,
                            softmax_scale=scale, causal=causal, return_lse=True, **kw)
        return out, _heads_first(lse, q)


def _heads_first(lse: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """A varlen kernel's log-sum-exp as float32 [h, total_q] (FA2 and FA4 give it so; some builds [total_q, h])."""
    if lse.shape[0] != q.shape[1] and lse.shape[-1] == q.shape[1]:
        lse = lse.transpose(0, 1)
    return lse[:, :q.shape[0]].float()


_KERNELS: dict = {}


def kernel_for(backend: str, device: torch.device, dtype):
    """The kernel that serves ``backend`` here: on CUDA in half precision torch's flash kernel (FA4's own for
    flash_attention_4), else the float32 reference."""
    if not _flash_kernel(device, dtype):
        name = "math"
    elif backend == "flash_attention_4":
        name = "fa4"
    else:
        name = "torch_flash"
    if name not in _KERNELS:
        _KERNELS[name] = {"math": MathKernel, "torch_flash": TorchFlashKernel, "fa4": FlashAttention4Kernel}[name]()
    return _KERNELS[name]


# ----------------------------------------------------------------- the attention function

def keep_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, **kwargs):
    """transformers' attention-function signature: query [B, h, A, d] (the active slots), key/value
    [B, kv_heads, K, d] (the layer's cache after its update), ``attention_mask`` the call's ``KeepChunks``.
    Returns ([B, A, h, d], None); filler slots get finite values of no meaning."""
    chunks: KeepChunks = attention_mask
    if dropout:
        raise ValueError("dashvl's kv='keep' attention runs without dropout (call model.eval())")
    if getattr(module, "attn_logit_softcapping", None):
        raise ValueError("dashvl's kv='keep' attention has no logit soft-capping; use attn_implementation='sdpa'")
    B, h, A, d = query.shape
    scale = scaling if scaling is not None else d ** -0.5
    kernel = kernel_for(chunks.backend, query.device, query.dtype)
    q = query.transpose(1, 2).reshape(B * A, h, d)
    keys = key.transpose(1, 2)[chunks.key_b, chunks.key_slot]  # [B·K, kv_heads, d], rank order
    values = value.transpose(1, 2)[chunks.key_b, chunks.key_slot]
    out_p, lse_p = kernel.varlen(q, keys, values, chunks.cu_q, chunks.cu_k, chunks.k_used, chunks.max_q,
                                 chunks.max_k, scale, False)
    q_loc = q.new_zeros(chunks.loc_index.shape[0], h, d).index_copy_(0, chunks.q_loc, q)
    out_l, lse_l = kernel.varlen(q_loc, keys[chunks.loc_index], values[chunks.loc_index], chunks.cu_loc,
                                 chunks.cu_loc, None, chunks.max_loc, chunks.max_loc, scale, True)
    merged = _merge(out_p, lse_p, out_l.index_select(0, chunks.q_loc), lse_l.index_select(1, chunks.q_loc),
                    chunks.no_prefix)
    return merged.view(B, A, h, d), None


def _merge(out_p, lse_p, out_l, lse_l, no_prefix):
    """Two partial attentions of the same queries (out [n, h, d], lse float32 [h, n]) as one:
    out_l + σ(lse_p - lse_l)·(out_p - out_l). ``no_prefix`` (bool [n]): queries whose chunk has no prefix (a kernel
    may leave their prefix output or lse unset): they take the local part alone."""
    out_p = out_p.masked_fill(no_prefix[:, None, None], 0.0)
    lse_p = lse_p.masked_fill(no_prefix[None], float("-inf"))
    weight = torch.sigmoid(lse_p - lse_l).transpose(0, 1)[..., None]  # the prefix's share [n, h, 1]
    return torch.lerp(out_l, out_p, weight.to(out_l.dtype))


def register() -> None:
    """Make ``NAME`` a transformers attention implementation (once; adding a name changes nothing else)."""
    from transformers import AttentionInterface
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
    if NAME not in ALL_ATTENTION_FUNCTIONS:
        AttentionInterface.register(NAME, keep_attention)


@contextlib.contextmanager
def switched(attention_config):
    """The halted layers' loop with their attention config pointing at ``keep_attention`` (restored after, also on
    errors). The config is the language model's: during the loop no other layer of it runs."""
    register()
    saved = attention_config._attn_implementation_internal
    attention_config._attn_implementation_internal = NAME
    try:
        yield
    finally:
        attention_config._attn_implementation_internal = saved
