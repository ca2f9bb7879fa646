"""DASH inside the vision tower: patches with the smallest attention update stop at block v_s.

At vision block v_s, Δ = ||U||₂ of that block's attention output per patch; in each image (each frame of a
video) the lowest-Δ ``vision_ratio`` fraction of patches halts. Later blocks run on the active patches only
(no query, no MLP; halted patches are not keys either) and halted patches keep their state from block v_s,
so the merger / projector still receives every patch and the LLM every visual token. Each later block
gathers its active patches and scatters its output back, so hidden states recorded per block (LLaVA reads
the second-to-last layer) have full length.

Two layouts, given by the adapter's ``VisionSpec``:
- ``"packed"`` (Qwen2-VL, Qwen2.5-VL): all images' patches in one [N, d] sequence, attention segments given
  per block by ``cu_seqlens`` (frames; Qwen2.5-VL's windowed blocks: windows), rotary cos/sin per patch.
- ``"batched"`` (CLIP in LLaVA): [images, 1 + patches, d] with a CLS token that never halts.
"""
from __future__ import annotations

import dataclasses

import torch

from . import policy

__all__ = ["VisionSpec", "VisionHalting", "VisionTrace"]


@dataclasses.dataclass(frozen=True)
class VisionSpec:
    """Where a vision tower's blocks are and how its patches are laid out."""

    tower: torch.nn.Module
    blocks: torch.nn.ModuleList
    attention: str            # attribute of a block holding its attention module
    layout: str               # "packed" or "batched"
    merge: int = 1            # packed: spatial merge size (patch order is merge-grouped)
    prefix: int = 0           # batched: leading tokens that never halt (CLS)
    # packed: ``order(grid_thw) -> p`` when the blocks see patches permuted (Qwen2.5-VL's windows):
    # block order = merge-grouped order[p]. Images and frames stay contiguous either way.
    order: object = None


@dataclasses.dataclass(frozen=True)
class VisionTrace:
    """What the vision tower halted in its last call (CPU tensors).

    Attributes:
        layer: v_s; blocks > v_s ran on active patches only. num_blocks: the tower's depth.
        ratio: vision_ratio.
        scores: float32, Δ per patch ([N] packed, [images, tokens] batched); uniform random scores with
            method="random".
        active: bool, same shape: False for patches halted at v_s.
        grids: per image ``(t, h, w)`` in patches.
        starts: packed: index of each image's first patch; batched: None.
    """

    layer: int
    num_blocks: int
    ratio: float
    scores: torch.Tensor
    active: torch.Tensor
    grids: tuple
    merge: int
    prefix: int
    starts: tuple | None

    def _grid_view(self, values: torch.Tensor, image: int) -> torch.Tensor:
        if not 0 <= image < len(self.grids):
            raise ValueError(f"the vision tower saw {len(self.grids)} image(s); asked for image {image}")
        t, h, w = self.grids[image]
        if self.starts is None:  # batched: row = image, CLS first
            return values[image, self.prefix:].view(t, h, w)
        m = self.merge  # packed patch order: (t, h / m, w / m, m, m)
        flat = values[self.starts[image]:self.starts[image] + t * h * w]
        return flat.view(t, h // m, w // m, m, m).permute(0, 1, 3, 2, 4).reshape(t, h, w)

    def patch_mask(self, image: int = 0) -> torch.Tensor:
        """bool [t, h, w] at patch resolution: True where the patch halted at v_s."""
        return ~self._grid_view(self.active, image)

    def score_grid(self, image: int = 0) -> torch.Tensor:
        """float32 [t, h, w]: Δ of each patch at v_s."""
        return self._grid_view(self.scores, image)


class VisionHalting:
    """Hooks on one vision tower. Created and removed by DashHandle."""

    def __init__(self, spec: VisionSpec, ratio: float, block: int, method, seed: int = 0):
        """``block``: v_s. ``method``: the ``dashvl.methods.Method`` whose ``vision_score(U, seed)`` ranks patches."""
        self.spec, self.ratio, self.block, self.method, self.seed = spec, ratio, block, method, seed
        self._hooks: list = []
        self._state = None
        self.trace_parts = None
        self.calls = 0  # tower calls that halted patches: the handle rebuilds its trace when this moves

    def install(self) -> list:
        s, v = self.spec, self.block
        self._hooks += [
            s.tower.register_forward_pre_hook(self._on_tower, with_kwargs=True),
            s.tower.register_forward_hook(self._on_tower_end, always_call=True),
            getattr(s.blocks[v], s.attention).register_forward_hook(self._on_attention, with_kwargs=True),
        ]
        for block in s.blocks[v + 1:]:
            self._hooks.append(block.register_forward_pre_hook(self._on_block, with_kwargs=True))
            # prepend: scatter before transformers' own output recorders see the block's output
            self._hooks.append(block.register_forward_hook(self._on_block_end, prepend=True))
        return self._hooks

    # ------------------------------------------------------------------ hooks

    def _on_tower(self, module, args, kwargs):
        grid = kwargs.get("grid_thw", args[1] if len(args) > 1 else None)
        self._state = {"grid_thw": grid}

    def _on_tower_end(self, module, args, output):
        self._state = None

    def _on_attention(self, module, args, kwargs, output):
        st = self._state
        if st is None:
            return None
        update = output[0] if isinstance(output, tuple) else output
        scores = self.method.vision_score(update, self.seed)
        if self.spec.layout == "packed":
            self._select_packed(st, scores, kwargs)
        else:
            self._select_batched(st, scores)
        self.trace_parts = (scores, st["active"], st["grids"], st["starts"], st.get("order"))
        self.calls += 1
        return None

    def _select_packed(self, st, scores, kwargs):
        thw = st["grid_thw"].tolist()  # the tower itself reads these sizes on the host too
        frames = [h * w for t, h, w in thw for _ in range(t)]
        keep = [n - int(self.ratio * n + 1e-9) for n in frames]
        device = scores.device
        sizes = torch.tensor(frames, device=device)
        seg = torch.repeat_interleave(torch.arange(len(frames), device=device), sizes)
        # sort by score, then (stably) by frame: each frame's patches in ascending Δ
        order = torch.sort(scores, stable=True).indices
        order = order[torch.sort(seg[order], stable=True).indices]
        starts = torch.cumsum(sizes, 0) - sizes
        rank = torch.arange(scores.numel(), device=device) - starts[seg[order]]
        halted_sorted = rank < (sizes - torch.tensor(keep, device=device))[seg[order]]
        halted = torch.zeros_like(halted_sorted).scatter_(0, order, halted_sorted)
        active = ~halted
        width = sum(keep)
        index = torch.sort(active.to(torch.uint8), stable=True).indices[scores.numel() - width:]
        # active patches before each position: maps any block's segment bounds onto the compact sequence
        cum = torch.cat([torch.zeros(1, dtype=torch.long, device=device), active.long().cumsum(0)])
        cos, sin = kwargs["position_embeddings"]
        counts = [t * h * w for t, h, w in thw]
        st.update(active=active, index=index, cum=cum, pos=(cos[index], sin[index]), grids=tuple(tuple(g) for g in thw),
                  starts=tuple(sum(counts[:i]) for i in range(len(counts))))
        if self.spec.order is not None:
            st["order"] = self.spec.order(st["grid_thw"])

    def _select_batched(self, st, scores):
        B, S = scores.shape
        p = self.spec.prefix
        eligible = torch.ones(B, S, dtype=torch.bool, device=scores.device)
        eligible[:, :p] = False
        k = int(self.ratio * (S - p) + 1e-9)
        halted = policy.select_halted(scores, eligible, torch.full((B,), k, device=scores.device))
        active = ~halted
        index, _ = policy.compact_index(active, S - k)
        side = int(round((S - p) ** 0.5))
        st.update(active=active, index=index, grids=tuple((1, side, side) for _ in range(B)), starts=None)

    def _on_block(self, module, args, kwargs):
        st = self._state
        if st is None or "index" not in st:
            return None
        hidden = args[0] if args else kwargs["hidden_states"]
        st["full"] = hidden
        index = st["index"]
        if self.spec.layout == "packed":
            compact = hidden.index_select(0, index)
            # max_seqlen stays: the full segments' maximum bounds the compact ones
            cu = kwargs["cu_seqlens"]
            kwargs.update(cu_seqlens=st["cum"][cu.long()].to(cu.dtype), position_embeddings=st["pos"])
        else:
            compact = hidden.gather(1, index[..., None].expand(-1, -1, hidden.shape[-1]))
        if args:
            return (compact,) + tuple(args[1:]), kwargs
        kwargs["hidden_states"] = compact
        return args, kwargs

    def _on_block_end(self, module, args, output):
        st = self._state
        if st is None or "index" not in st:
            return None
        out = output[0] if isinstance(output, tuple) else output
        full, index = st["full"], st["index"]
        if self.spec.layout == "packed":
            merged = full.index_copy(0, index, out)
        else:
            merged = full.scatter(1, index[..., None].expand(-1, -1, full.shape[-1]), out)
        return (merged,) + tuple(output[1:]) if isinstance(output, tuple) else merged

    def trace(self, num_blocks: int) -> VisionTrace | None:
        if self.trace_parts is None:
            return None
        scores, active, grids, starts, order = self.trace_parts
        scores, active = scores.float().cpu(), active.cpu()
        if order is not None:  # back to the merge-grouped raster order the grids describe
            order = order.cpu()
            scores = torch.empty_like(scores).index_copy_(0, order, scores)
            active = torch.empty_like(active).index_copy_(0, order, active)
        return VisionTrace(layer=self.block, num_blocks=num_blocks, ratio=self.ratio, scores=scores,
                           active=active, grids=grids, merge=self.spec.merge, prefix=self.spec.prefix,
                           starts=starts)
