"""What one decode step of ``generate()`` asks of the host: its aten ops and its device-to-host reads.

On a host-bound GPU decode (transformers' Python per layer) every op the engine adds to a step costs wall
time, so the count is the measure that the CPU's noisy clock cannot give. Counts the step's own ops, the
dashvl hooks' included, for the unmodified model and each setting:

    python -m bench.decode_ops                       # qwen2-vl-mid, 1k-token text prompt, batch 1
    python -m bench.decode_ops --batch 3 --tokens 256
"""
from __future__ import annotations

import argparse
import collections
import contextlib

import torch
from torch.utils._python_dispatch import TorchDispatchMode


__all__ = ["OpCounter", "StepProbe", "decode_step_counts"]


class OpCounter(TorchDispatchMode):
    """Counts every aten op dispatched while it is on; ``_local_scalar_dense`` is what ``item()``,
    ``bool(tensor)``, ``int(tensor)`` and ``float(tensor)`` of a device tensor wait on."""

    def __init__(self):
        super().__init__()
        self.ops: collections.Counter = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[str(func.overloadpacket)] += 1
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def _counting_tolist(counts: collections.Counter):
    """``Tensor.tolist`` reads the data without dispatching an op (on the CPU): count its calls here."""
    plain = torch.Tensor.tolist

    def tolist(self):
        counts["tolist"] += 1
        return plain(self)

    torch.Tensor.tolist = tolist
    try:
        yield
    finally:
        torch.Tensor.tolist = plain


class StepProbe:
    """Counts of the model calls with one new token per row (decode steps), from the model's first
    pre-hook to its last post-hook: install it after ``compress`` so that dashvl's hooks fall inside.

    Attributes:
        steps: one ``collections.Counter`` per decode step (aten op name -> calls; "tolist" -> calls).
    """

    def __init__(self, model):
        self.steps: list[collections.Counter] = []
        self._mode = self._tolist = None
        self._hooks = [model.register_forward_pre_hook(self._start, with_kwargs=True, prepend=True),
                       model.register_forward_hook(self._stop, always_call=True)]

    def _start(self, module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is None or ids.shape[1] != 1:
            return
        self._mode = OpCounter()
        self._tolist = _counting_tolist(self._mode.ops)
        self._tolist.__enter__()
        self._mode.__enter__()

    def _stop(self, module, args, output):
        if self._mode is None:
            return
        self._mode.__exit__(None, None, None)
        self._tolist.__exit__(None, None, None)
        self.steps.append(self._mode.ops)
        self._mode = None

    def remove(self) -> None:
        for h in self._hooks:
            h.remove()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.remove()


def host_reads(counts: collections.Counter) -> int:
    """Device-to-host reads in ``counts``: scalar reads and ``tolist`` calls."""
    return counts["aten._local_scalar_dense"] + counts["tolist"]


def decode_step_counts(model, inputs: dict, settings, new_tokens: int = 4, **generate_kw) -> list[collections.Counter]:
    """The counts of the last decode step of a greedy ``generate`` (with ``generate_kw``, for example
    ``cache_implementation="static"``) for each setting (None: unmodified)."""
    from bench.gpu_generate import install
    out = []
    for s in settings:
        handle = install(model, s)
        try:
            with StepProbe(model) as probe, torch.no_grad():
                model.generate(**inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                               **generate_kw)
        finally:
            if handle is not None:
                handle.remove()
        out.append(probe.steps[-1])
    return out


def main(argv=None):
    from bench.common import build_model
    from bench.gpu_generate import label, make_inputs, parse_settings

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="qwen2-vl-mid")
    p.add_argument("--attn", default="sdpa")
    p.add_argument("--tokens", type=int, default=1024)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--pad", type=int, default=0, help="left padding of every row but the first")
    p.add_argument("--settings", default="unmodified;ratio=0;ratio=0.75,layer=2;ratio=0.75,layer=2,kv=keep")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    model = build_model(args.model, "cpu", torch.float32, attn=args.attn, vision=False)
    model.generation_config.eos_token_id = None
    inputs = make_inputs(model, "llm", args.tokens, args.batch, "cpu")
    if args.pad:
        inputs["attention_mask"][1:, :args.pad] = 0
    settings = parse_settings(args.settings)
    counts = decode_step_counts(model, inputs, settings)
    base = sum(counts[0].values())
    print(f"one decode step, {args.model}, {args.tokens} tokens, batch {args.batch}, pad {args.pad}, {args.attn}")
    print("| setting | aten ops | vs unmodified | host reads |\n|---|---|---|---|")
    for s, c in zip(settings, counts):
        n = sum(c.values()) - c["tolist"]
        extra = c - counts[0]
        print(f"| {label(s)} | {n} | {n - base + counts[0]['tolist']:+d} {dict(extra) if extra else ''} | {host_reads(c)} |")


if __name__ == "__main__":
    main()
