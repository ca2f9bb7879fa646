"""Token halting with any score function, run at full length by masking (no gather, so no speedup).

The same semantics as ``dashvl.compress`` (DESIGN §1), for scores dashvl has no method for yet
(``longctx.references``): above l_s a halted token's hidden state is its layer-l_s output (``kv="keep"``:
its keys/values still come from that frozen state, so nothing else changes), and with ``kv="drop"`` it is
masked as a key in every layer above l_s, at prefill and at every decode step. Exact but slow; FLOPs are
those of the equivalent gathered run (``flops``).
"""
from __future__ import annotations

import types

import torch

from dashvl import policy
from dashvl.flops import prefill_flops

__all__ = ["MaskedHalting"]

_BACKENDS = ("sdpa", "eager")  # take an explicit 4-D float mask


class MaskedHalting:
    """Install with ``with MaskedHalting(model, score_fn, ratio=0.5, layer=12, kv="drop"):`` around
    ``model.generate``. One prompt per ``generate`` call (a fresh cache); batches may be left-padded.

    Attributes:
        last: ``(real, active)`` bool [B, T] of the last prefill, on the CPU.
    """

    def __init__(self, model, score_fn, ratio: float, layer: int, kv: str = "drop", protect_last: int = 1,
                 **options):
        if not 0 <= ratio < 1:
            raise ValueError(f"ratio must be in [0, 1); got {ratio!r}")
        if kv not in ("drop", "keep"):
            raise ValueError(f"kv must be 'drop' or 'keep'; got {kv!r}")
        self.layers = model.model.layers
        if not 0 <= layer <= len(self.layers) - 2:
            raise ValueError(f"layer must be in [0, {len(self.layers) - 2}] for this model; got {layer!r}")
        backend = model.config._attn_implementation
        if kv == "drop" and backend not in _BACKENDS:
            raise ValueError(f"kv='drop' needs an explicit mask: load with attn_implementation in {_BACKENDS}, "
                             f"not {backend!r}")
        self.model, self.score_fn, self.options = model, score_fn, options
        self.ratio, self.layer, self.kv, self.protect_last = ratio, layer, kv, protect_last
        self.hooks, self.last = [], None
        self._mask2d = self._halted = self._frozen = self._inputs = None

    def __enter__(self):
        m, ls = self.model, self.layer
        self.hooks.append(m.register_forward_pre_hook(self._on_call, with_kwargs=True))
        attn = self.layers[ls].self_attn
        self.hooks.append(attn.register_forward_pre_hook(self._on_attention_input, with_kwargs=True))
        self.hooks.append(attn.register_forward_hook(self._on_attention_output))
        self.hooks.append(self.layers[ls].register_forward_hook(self._on_activation_layer))
        for layer in self.layers[ls + 1:]:
            if self.kv == "drop":
                self.hooks.append(layer.register_forward_pre_hook(self._on_halted_layer_input, with_kwargs=True))
            self.hooks.append(layer.register_forward_hook(self._on_halted_layer_output))
        return self

    def __exit__(self, *exc):
        while self.hooks:
            self.hooks.pop().remove()

    # the model call: its 2-D mask says which keys are real (prompt padding, then every generated token)
    def _on_call(self, module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        mask = kwargs.get("attention_mask")
        if mask is None:
            mask = torch.ones(ids.shape[0], ids.shape[1] + self._past(kwargs), dtype=torch.long, device=ids.device)
        self._mask2d = mask.bool()
        if ids.shape[1] > 1:
            if self._past(kwargs):
                raise ValueError("MaskedHalting runs one prompt per generate() call; start from an empty cache")
            self._halted = None

    @staticmethod
    def _past(kwargs) -> int:
        cache = kwargs.get("cache", kwargs.get("past_key_values"))  # "cache" since transformers 5.2x
        return cache.get_seq_length() if cache is not None else 0

    def _prefill(self, hidden) -> bool:
        return hidden.shape[1] > 1

    def _on_attention_input(self, module, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        if self._prefill(hidden):
            self._inputs = (hidden, *kwargs["position_embeddings"])
        return None

    def _on_attention_output(self, module, args, output):
        hidden, cos, sin = self._inputs or (None, None, None)
        if hidden is None or not self._prefill(hidden):
            return None
        real = self._mask2d[:, -hidden.shape[1]:]
        U = output[0] if isinstance(output, tuple) else output
        with torch.no_grad():
            scores = self.score_fn(module, hidden, U, cos, sin, real, **self.options).float()
        kinds = policy.token_kinds(None, real, None, None)
        eligible = policy.eligible_tokens(kinds, "all", self.protect_last)
        num_halt = (eligible.sum(1).double() * self.ratio + 1e-9).floor().long()  # DashConfig.num_halted
        self._halted = policy.select_halted(scores, eligible, num_halt)
        self.last = (real.cpu(), (real & ~self._halted).cpu())
        self._inputs = None
        return None

    def _on_activation_layer(self, module, args, output):
        out = output[0] if isinstance(output, tuple) else output
        if self._prefill(out):
            self._frozen = out
        return None

    def _on_halted_layer_input(self, module, args, kwargs):
        """kv="drop": halted prompt tokens are no keys here, now or at any later decode step."""
        if self._halted is None:
            return None
        hidden = args[0] if args else kwargs["hidden_states"]
        q = hidden.shape[1]
        keys = self._mask2d.clone()
        T = self._halted.shape[1]
        keys[:, :T] &= ~self._halted
        S = keys.shape[1]
        causal = torch.ones(q, S, dtype=torch.bool, device=keys.device).tril(S - q)
        diagonal = torch.zeros_like(causal)
        diagonal[torch.arange(q), torch.arange(S - q, S)] = True  # a halted query never has an empty row
        allowed = (keys[:, None, :] & causal) | diagonal
        mask = torch.zeros(allowed.shape, dtype=hidden.dtype, device=hidden.device)
        mask = mask.masked_fill(~allowed, torch.finfo(hidden.dtype).min)[:, None]
        return args, {**kwargs, "attention_mask": mask}

    def _on_halted_layer_output(self, module, args, output):
        if self._halted is None:
            return None
        out = output[0] if isinstance(output, tuple) else output
        if not self._prefill(out):
            return None
        out = torch.where(self._halted[..., None], self._frozen, out)
        return (out,) + tuple(output[1:]) if isinstance(output, tuple) else out

    def flops(self, text_config, row: int = 0) -> tuple[int, int]:
        """``(unmodified, halted)`` prefill FLOPs of the last prefill's row, as the gathered run would spend."""
        real, active = self.last
        view = types.SimpleNamespace(real=real, active=active, kv=self.kv, layer=self.layer,
                                     num_layers=len(self.layers))
        return prefill_flops(text_config, view, row)
