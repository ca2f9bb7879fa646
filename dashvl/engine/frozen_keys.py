"""kv="keep": halted tokens still serve as keys/values in every halted-region layer, from their frozen state."""
from __future__ import annotations

import torch
from transformers.cache_utils import DynamicCache

from .. import policy
from ..adapters.frozen_hidden import FrozenHidden
from .region import gather_tokens

__all__ = ["FrozenKeys"]


class FrozenKeys:
    """The halted tokens' keys/values for one call under kv="keep". H = ``width`` slots per row.

    1. ``select`` (at l_s): the halted tokens' slots, in position order, fillers last.
    2. ``gather`` (entering the halted region): their frozen hidden states [B, H, d] and cos/sin at their
       original positions (per rope kind, where layers differ); returns the sequence position of each slot for
       the cache layout.
    3. ``write`` (before each halted-region layer runs layer by layer): that layer's keys/values of the halted
       tokens (``halted_kv``: input norm, k/v projections, RoPE) into its cache layer, ahead of the active
       tokens' own; or, on the graph path, ``graph_inputs`` hands the same inputs to the graph's recorder.

    Args:
        width: the most halted tokens of any row. all_valid: every row halts ``width`` tokens.
        halted_kv: ``adapter.halted_kv(decoder_layer, hidden, cos, sin) -> (keys, values)``, each
            [B, kv_heads, H, head_dim].
    """

    def __init__(self, width: int, all_valid: bool, halted_kv):
        self.width, self.all_valid, self.halted_kv = width, all_valid, halted_kv
        self.index = self.valid = None        # long / bool [B, H]
        self.hidden = self.shared = None
        self.rotaries: dict = {}              # rope kind (None: the call's) -> (cos, sin) [B, H, head_dim]
        self.cache = None                     # where ``write`` puts keys/values (layer-by-layer path)

    def round_up(self, width: int) -> None:
        """Use ``width`` (>= the halted count) slots per row: the graph path buckets them."""
        self.all_valid = self.all_valid and width == self.width
        self.width = width

    def select(self, halted: torch.Tensor) -> None:
        """``halted``: bool [B, T], the tokens that stop at l_s."""
        self.index, self.valid = policy.compact_index(halted, self.width)

    def gather(self, frozen: torch.Tensor, rotaries: dict, past: int):
        """Take the halted tokens' inputs from ``frozen`` [B, T, d] and ``rotaries`` ({rope kind: (cos, sin)
        [B or 1, T, head_dim]}).

        Returns:
            positions: long [B, H], each slot's sequence position (``past`` + token index; -1 for fillers);
            all_valid: no filler slots.
        """
        self.hidden = gather_tokens(frozen, self.index)
        self.shared = FrozenHidden(self.hidden)  # every layer's write shares its input norm's common part
        self.rotaries = {kind: (gather_tokens(cos, self.index), gather_tokens(sin, self.index))
                         for kind, (cos, sin) in rotaries.items()}
        return torch.where(self.valid, self.index + past, -1), self.all_valid

    def attach(self, cache) -> DynamicCache | None:
        """Layer-by-layer path: write into ``cache``; with none, into a private cache, returned so the halted
        layers receive it (their attention reads the halted keys/values back from it)."""
        if cache is not None:
            self.cache = cache
            return None
        self.cache = DynamicCache()
        return self.cache

    def write(self, decoder_layer, layer_index: int, rope=None) -> None:
        """Before ``decoder_layer`` (at ``layer_index``, taking rope kind ``rope``) runs: the halted tokens'
        keys/values into its cache layer."""
        keys, values = self.halted_kv(decoder_layer, self.shared, *self.rotaries[rope])
        self.cache.update(keys, values, layer_index)

    def graph_inputs(self) -> tuple:
        """(hidden [B, H, d], cos, sin): what the graph's recorder needs to compute the same keys/values (the
        graph path runs only halted layers of one kind)."""
        return (self.hidden, *self.rotaries[None])
