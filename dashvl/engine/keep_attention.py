"""kv="keep" on fast attention kernels: the halted layers' attention without an explicit mask.

Under kv="keep" an active query sees every key (active or frozen) at a position up to its own. In the cache
slot order ([earlier turns | halted tokens | active tokens]) that is a staircase no fast kernel takes, so SDPA
would leave its flash kernel for a masked one (about 66% of keep's FLOPs limit on the H200, issue 16) and
FlashAttention could not serve it at all. In *rank* order (every valid key sorted by position) a query of rank r
sees exactly the keys of rank 0..r. So the active queries are cut into chunks of consecutive queries (at most
``CHUNK`` of them, spanning at most ``SPAN`` ranks), and each chunk's attention is two unmasked-or-causal
varlen calls merged by their log-sum-exp:

- **prefix**: the chunk's queries against the keys ranked before its first query, unmasked; each chunk reads a
  prefix of its row's rank-ordered keys (``shared_prefix`` kernels read them in place, others from a copy);
- **local**: the keys from the chunk's first query's rank to its last's, causal; the rows of that block that are
  not active queries (halted tokens' ranks) are filled with zero queries and thrown away.

Per layer this costs one gather of the keys/values into rank order, two kernel calls and an elementwise merge.
Extra attention work over the ideal (``A·N/2`` query-key pairs): the local blocks, about ``A · CHUNK/(1-ρ)²/2``.
The chunking (``KeepChunks``) is worked out once per call on the host (one copy of the key positions), shared by
every halted layer.

The halted layers reach ``keep_attention`` through transformers' attention interface: the runner switches the
attention config to ``NAME`` for the halted layers' loop only (``switched``), and hands them a ``KeepChunks`` as
their attention mask.
"""
from __future__ import annotations

import contextlib

import numpy as np
import torch

__all__ = ["NAME", "CHUNK", "SPAN", "MODE", "MIN_TOKENS", "KeepChunks", "keep_attention", "applies", "kernel_for",
           "switched", "register"]

NAME = "dashvl_keep"

# At most this many queries per chunk: a multiple of the kernels' 128-row query tiles, so the prefix call's
# tiles are full. The local blocks cost about CHUNK/(1-ρ)² / 2 pairs per query.
CHUNK = 128
# A chunk closes early where its queries would span more ranks than this (a long run of halted tokens, as
# Δ halts an image's background): the local block is causal over the whole span.
SPAN = 1024

# "auto": the fast path on flash backends always (they take no mask), on SDPA on CUDA in half precision from
# MIN_TOKENS prompt tokens on; "always": wherever it can be exact (tests: the CPU runs it with the reference
# kernel); "never": masks only. Measured on the H200 at Qwen2-VL-7B shapes, keep 0.75 (bench/RESULTS.md): at 4,160
# tokens SDPA's masked kernel with the CUDA graph ties (2.08x against 2.05x: the fast path's extra ops per layer
# cost host time there), at 16,448 the fast path is ahead (2.46x against 1.96x). The cut-over between is not
# measured: 8,192 is the midpoint.
MODE = "auto"
MIN_TOKENS = 8192


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
    return backend == "sdpa" and device.type == "cuda" and dtype in (torch.float16, torch.bfloat16) and \
        length >= MIN_TOKENS


class KeepChunks:
    """The chunking of one call's kv="keep" attention, shared by every halted layer (built on the host once).

    Key slots (K per row) are the layer's keys after its cache update: [earlier turns | halted | active], with
    ``key_pos`` [B, K] their sequence positions (-1: unused) and the active queries the last A slots. N: the most
    valid keys of any row; ranks index a row's valid keys in position order.

    Attributes (device tensors; int32 where a kernel reads them):
        backend: the attention implementation the model was loaded with.
        key_b, key_slot: long [B·N], the key slot of each (row, rank): the rank-ordered keys are
            ``keys.transpose(1, 2)[key_b, key_slot]`` ([B·N, kv_heads, head_dim], row b at b·N).
        q_flat: long [nq], the valid queries as flat indices into [B·A] (row-major).
        cu_q: int32 [C+1], the prefix call's query offsets per chunk (C chunks, in q_flat order).
        k_start, k_used: int32 [C], each chunk's prefix: rank-ordered keys [k_start, k_start + k_used).
        cu_k: int32 [C+1], ``k_start`` with B·N appended (a shared-prefix kernel's offsets).
        dup_index, cu_dup: for kernels that read each chunk's prefix from a copy: long [sum of k_used], the
            rank-ordered keys of every prefix in turn, and int32 [C+1] their offsets (built on first use).
        loc_index: long [nl], the rank-ordered keys of every chunk's local block in turn; cu_loc: int32 [C+1].
        q_loc: long [nq], each query's row in the local blocks. first_queries: long, the queries whose chunk has
            no prefix. all_queries: no filler slot (``q_flat`` is every slot in order: no gather needed).
        max_q, max_k, max_loc: the longest chunk, prefix and local block (host ints).
    """

    def __init__(self, key_pos: torch.Tensor, num_queries: int, backend: str, chunk: int = CHUNK, span: int = SPAN):
        device = key_pos.device
        self.backend = backend  # the model's attention backend: picks the kernel (``kernel_for``)
        kp = key_pos.cpu().numpy()  # the one host copy of the call's fast keep path
        B, K = kp.shape
        A = num_queries
        big = np.iinfo(np.int64).max
        order = np.argsort(np.where(kp >= 0, kp, big), axis=1, kind="stable")
        n_valid = (kp >= 0).sum(1)
        N = int(n_valid.max())
        rank = np.empty_like(order)
        np.put_along_axis(rank, order, np.broadcast_to(np.arange(K), (B, K)), axis=1)
        q_valid = kp[:, K - A:] >= 0
        q_rank = rank[:, K - A:]
        starts, ends, rows = [], [], []
        for b in range(B):
            n_act = int(q_valid[b].sum())  # fillers come last
            r = q_rank[b, :n_act]
            s = 0
            while s < n_act:
                e = min(s + chunk, n_act)
                e = min(e, max(int(np.searchsorted(r, r[s] + span)), s + 1))
                starts.append(s)
                ends.append(e)
                rows.append(b)
                s = e
        starts, ends, rows = np.array(starts), np.array(ends), np.array(rows)
        counts = ends - starts
        first = q_rank[rows, starts]
        last = q_rank[rows, ends - 1]
        loc_len = last - first + 1
        self.N, self.A, self.batch = N, A, B
        self.num_chunks = len(starts)
        cu = lambda x: np.concatenate([[0], np.cumsum(x)])  # noqa: E731
        q_flat = np.nonzero(q_valid.reshape(-1))[0]
        chunk_of_query = np.repeat(np.arange(len(starts)), counts)
        cu_loc = cu(loc_len)
        q_rank_flat = q_rank.reshape(-1)[q_flat]
        q_loc = cu_loc[chunk_of_query] + (q_rank_flat - first[chunk_of_query])
        loc_index = np.repeat(rows * N + first - cu_loc[:-1], loc_len) + np.arange(cu_loc[-1])
        key_slot = order[:, :N].reshape(-1)
        key_b = np.repeat(np.arange(B), N)
        self.k_start_np, self.k_used_np = rows * N, first
        self.max_q, self.max_k, self.max_loc = int(counts.max()), int(first.max()), int(loc_len.max())

        def dev(x, dtype=torch.long):
            return torch.from_numpy(np.ascontiguousarray(x)).to(device=device, dtype=dtype, non_blocking=True)

        i32 = torch.int32
        self.key_b, self.key_slot, self.q_flat = dev(key_b), dev(key_slot), dev(q_flat)
        self.cu_q, self.cu_loc = dev(cu(counts), i32), dev(cu_loc, i32)
        self.k_start, self.k_used = dev(rows * N, i32), dev(first, i32)
        self.cu_k = dev(np.concatenate([rows * N, [B * N]]), i32)
        self.loc_index, self.q_loc = dev(loc_index), dev(q_loc)
        self.first_queries = dev(np.nonzero(first[chunk_of_query] == 0)[0])  # their chunk has no prefix
        self.all_queries = bool(q_valid.all())  # no filler: q_flat is every slot in order
        self._dup = None

    @property
    def dup_index(self) -> torch.Tensor:
        return self._duplicated()[0]

    @property
    def cu_dup(self) -> torch.Tensor:
        return self._duplicated()[1]

    def _duplicated(self):
        if self._dup is None:
            used, start = self.k_used_np, self.k_start_np
            offsets = np.concatenate([[0], np.cumsum(used)])
            index = np.repeat(start - offsets[:-1], used) + np.arange(offsets[-1])
            device = self.q_flat.device
            self._dup = (torch.from_numpy(index).to(device), torch.from_numpy(offsets).to(device, torch.int32))
        return self._dup

    def work(self) -> dict:
        """Query-key pairs each part computes (for the benchmark's accounting)."""
        counts = np.diff(self.cu_q.cpu().numpy())
        loc = np.diff(self.cu_loc.cpu().numpy()).astype(np.int64)
        return {"prefix": int((counts * self.k_used_np).sum()), "local": int((loc * (loc + 1) // 2).sum()),
                "queries": int(counts.sum()), "chunks": self.num_chunks}


# ----------------------------------------------------------------- kernels

class MathKernel:
    """The reference: float32 scores, any device. Serves the CPU (tests) and flash backends emulated there."""
    shared_prefix = True

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
    shared_prefix = True

    def varlen(self, q, k, v, cu_q, cu_k, used_k, max_q, max_k, scale, causal):
        out, lse = torch.ops.aten._flash_attention_forward(
            q, k, v, cu_q, cu_k, max_q, max_k, 0.0, causal, False, scale=scale, seqused_k=used_k)[:2]
        return out, _heads_first(lse, q)


class FlashAttention4Kernel:
    """FlashAttention 4's CuTe kernels (``flash_attn.cute.flash_attn_varlen_func``), for
    attn_implementation="flash_attention_4". Its ``seqused_k`` with repeating ``cu_seqlens_k`` reads the prefixes
    in place too (flash-attn-4 4.0.0b36 on the H200: tests/gpu/results/keep_kernels_fa4.json)."""
    shared_prefix = True

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
    if device.type != "cuda" or dtype not in (torch.float16, torch.bfloat16):
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
    Returns ([B, A, h, d], None); filler slots get zeros."""
    chunks: KeepChunks = attention_mask
    if dropout:
        raise ValueError("dashvl's kv='keep' attention runs without dropout (call model.eval())")
    if getattr(module, "attn_logit_softcapping", None):
        raise ValueError("dashvl's kv='keep' attention has no logit soft-capping; use attn_implementation='sdpa'")
    B, h, A, d = query.shape
    scale = scaling if scaling is not None else d ** -0.5
    kernel = kernel_for(chunks.backend, query.device, query.dtype)
    q = query.transpose(1, 2).reshape(B * A, h, d)
    if not chunks.all_queries:  # fillers: only the valid queries go in
        q = q[chunks.q_flat]
    keys = key.transpose(1, 2)[chunks.key_b, chunks.key_slot]  # [B·N, kv_heads, d], rank order
    values = value.transpose(1, 2)[chunks.key_b, chunks.key_slot]
    if kernel.shared_prefix:
        out_p, lse_p = kernel.varlen(q, keys, values, chunks.cu_q, chunks.cu_k, chunks.k_used, chunks.max_q,
                                     max(chunks.max_k, 1), scale, False)
    else:
        index = chunks.dup_index
        out_p, lse_p = kernel.varlen(q, keys[index], values[index], chunks.cu_q, chunks.cu_dup, None, chunks.max_q,
                                     max(chunks.max_k, 1), scale, False)
    q_loc = q.new_zeros(chunks.loc_index.shape[0], h, d)
    q_loc[chunks.q_loc] = q
    out_l, lse_l = kernel.varlen(q_loc, keys[chunks.loc_index], values[chunks.loc_index], chunks.cu_loc,
                                 chunks.cu_loc, None, chunks.max_loc, chunks.max_loc, scale, True)
    merged = _merge(out_p, lse_p, out_l[chunks.q_loc], lse_l[:, chunks.q_loc], chunks.first_queries)
    if chunks.all_queries:
        return merged.view(B, A, h, d), None
    out = query.new_zeros(B * A, h, d)
    out[chunks.q_flat] = merged
    return out.view(B, A, h, d), None


def _merge(out_p, lse_p, out_l, lse_l, no_prefix):
    """Two partial attentions of the same queries (out [n, h, d], lse float32 [h, n]) as one, in the queries'
    dtype: out_l + σ(lse_p - lse_l)·(out_p - out_l). ``no_prefix``: long, the queries whose chunk has no prefix
    (a kernel may leave their prefix output or lse unset): they take the local part alone."""
    out_p = out_p.index_fill(0, no_prefix, 0.0) if no_prefix.numel() else out_p
    lse_p = lse_p.index_fill(1, no_prefix, float("-inf")) if no_prefix.numel() else lse_p
    weight = torch.sigmoid(lse_p - lse_l).transpose(0, 1)[..., None]  # the prefix's share, float32 [n, h, 1]
    return torch.lerp(out_l.float(), out_p.float(), weight).to(out_l.dtype)


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
