"""Pick ``layer`` and ``ratio`` for a model from a few prompts: the paper's perplexity proxy, shipped.

    best = dashvl.calibrate(model, [tokenizer(p, return_tensors="pt") for p in prompts], max_loss=0.05)
    best.config            # a DashConfig: the fastest setting within the loss budget
    print(best.markdown())  # everything it measured

For each sample the unmodified model first answers greedily (``new_tokens`` tokens: the reference). Each
candidate setting then reads that answer back through ``generate`` itself with the answer forced (a halted
prefill of the prompt, one decode step per token; every family prepares its inputs as it always does): the mean negative log-likelihood of the reference tokens
(its increase over the unmodified model is the *loss*) and the share of them that stay the argmax (the
*agreement*). The pick is the setting with the largest prefill FLOPs limit whose loss increase is at most
``max_loss`` (ties: the higher agreement); when none is, the setting with the least loss, flagged.
"""
from __future__ import annotations

import dataclasses
import itertools
import numbers
from collections.abc import Iterable, Mapping

import torch

from .config import KV_MODES, DashConfig
from .flops import prefill_flops

__all__ = ["calibrate", "Calibration", "DEFAULT_LAYERS", "DEFAULT_RATIOS"]

DEFAULT_LAYERS = (2, 0.25, 0.4)
DEFAULT_RATIOS = (0.25, 0.4, 0.5, 0.667, 0.75)


@dataclasses.dataclass
class Calibration:
    """What ``calibrate`` measured and picked.

    Attributes:
        config: the picked ``DashConfig``.
        within_budget: False when no candidate met ``max_loss`` (``config`` is then the least-loss one).
        rows: one dict per candidate: method, layer (resolved), ratio, kv, loss (mean NLL increase over the
            unmodified model, nats per token), agreement (share of reference tokens still the argmax) and
            flops_speedup (the prefill FLOPs limit, averaged over samples).
        reference_nll: the unmodified model's mean NLL of its own greedy answers.
    """

    config: DashConfig
    within_budget: bool
    rows: list[dict]
    reference_nll: float
    max_loss: float

    def pick(self, max_loss: float) -> dict | None:
        """The row ``calibrate`` picks under another budget (the rows do not depend on it), or None."""
        return _pick(self.rows, max_loss)

    def markdown(self) -> str:
        lines = [f"unmodified: NLL {self.reference_nll:.3f} per reference token; budget max_loss={self.max_loss}",
                 "", "| method | layer | ratio | kv | loss increase | agreement | FLOPs limit | pick |",
                 "|---|---|---|---|---|---|---|---|"]
        for r in self.rows:
            pick = "**pick**" if (r["method"], r["layer"], r["ratio"], r["kv"]) == (
                self.config.method, self.config.layer, self.config.ratio, self.config.kv) else ""
            lines.append(f"| {r['method']} | {r['layer']} | {r['ratio']} | {r['kv']} | {r['loss']:+.3f} | "
                         f"{r['agreement']:.3f} | {r['flops_speedup']:.2f}× | {pick} |")
        if not self.within_budget:
            lines += ["", f"no setting met max_loss={self.max_loss}: the pick is the one with the least loss"]
        return "\n".join(lines)


def _pick(rows: list[dict], max_loss: float) -> dict | None:
    ok = [r for r in rows if r["loss"] <= max_loss]
    return max(ok, key=lambda r: (r["flops_speedup"], r["agreement"])) if ok else None


def _check_grid(name: str, values, check) -> tuple:
    values = tuple(values)
    if not values:
        raise ValueError(f"{name} must name at least one value")
    for v in values:
        check(v)
    return values


def _check_ratio(value) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 < value < 1:
        raise ValueError(f"calibrate's ratios must lie in (0, 1) (0 halts nothing: it is the reference); got {value!r}")


def _check_kv(value) -> None:
    if value not in KV_MODES:
        raise ValueError(f"kv must be one of {KV_MODES}; got {value!r}")


def _check_candidate(value) -> None:
    if not isinstance(value, DashConfig):
        raise TypeError(f"candidates are dashvl.DashConfig objects; got {type(value).__name__}")


def _no_check(value) -> None:  # DashConfig checks layers and methods, naming what is allowed
    pass


def _inputs(sample, device) -> dict:
    if not isinstance(sample, Mapping) or "input_ids" not in sample:
        raise TypeError("each calibration sample is the model's inputs for one prompt, a dict with input_ids "
                        f"(e.g. tokenizer(text, return_tensors='pt')); got {type(sample).__name__}")
    inputs = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in sample.items()}
    if inputs["input_ids"].dim() != 2 or inputs["input_ids"].shape[0] != 1:
        raise ValueError(f"calibration samples are one prompt each (input_ids [1, T]); got shape "
                         f"{tuple(inputs['input_ids'].shape)}")
    if inputs["input_ids"].shape[1] < 2:
        raise ValueError("a calibration prompt needs at least 2 tokens (one may halt, the last stays)")
    return inputs


class _Force:
    """A logits processor that makes generate pick ``answer``'s tokens in turn (teacher forcing through
    generate's own path, so every model family prepares its inputs as it always does)."""

    def __init__(self, answer: torch.Tensor):
        self.answer, self.step = answer, 0

    def __call__(self, input_ids, scores):
        forced = torch.full_like(scores, float("-inf"))
        forced[:, self.answer[0, self.step]] = 0.0
        self.step += 1
        return forced


@torch.no_grad()
def _read_back(model, inputs: dict, answer: torch.Tensor) -> tuple[float, float]:
    """Mean NLL of ``answer`` [1, n] after ``inputs``' prompt, and the share of it that is the argmax: generate
    with the answer forced (a prefill of the prompt, then one decode step per answer token), reading the raw
    logits of every step."""
    from transformers import LogitsProcessorList

    n = answer.shape[1]
    pad = getattr(getattr(model, "generation_config", None), "pad_token_id", None)
    out = model.generate(**inputs, max_new_tokens=n, min_new_tokens=n, do_sample=False, eos_token_id=None,
                         pad_token_id=pad, logits_processor=LogitsProcessorList([_Force(answer)]),
                         output_logits=True, return_dict_in_generate=True)
    return _nll_and_agreement(out.logits, answer)


def _nll_and_agreement(logits, answer: torch.Tensor) -> tuple[float, float]:
    """Mean NLL of ``answer`` [1, n] under the per-step ``logits`` ([1, vocab] each), and the share that is the argmax."""
    nll, hits = 0.0, 0
    for step, token in zip(logits, answer[0]):
        nll -= float(torch.log_softmax(step[0].float(), -1)[token])
        hits += int(step[0].argmax() == token)
    return nll / len(logits), hits / len(logits)


def calibrate(model, samples: Iterable, *, max_loss: float = 0.05, layers=DEFAULT_LAYERS, ratios=DEFAULT_RATIOS,
              methods=("dash-avg",), kv=("drop",), new_tokens: int = 16, progress: bool = True,
              candidates=None, **settings) -> Calibration:
    """Measure a grid of settings on ``samples`` and pick the fastest within ``max_loss``.

    Args:
        model: an uncompressed model dashvl supports (it is left uncompressed).
        samples: model inputs, one prompt each (dicts with ``input_ids`` [1, T], and ``pixel_values`` etc.
            for a vision-language model).
        max_loss: the largest allowed increase of the mean NLL of the reference answers (nats per token).
        layers, ratios, methods, kv: the grid (``DashConfig`` values; ratios in (0, 1)).
        new_tokens: reference answer length per sample.
        candidates: ``DashConfig``s to measure instead of the product of layers, ratios, methods and kv.
        settings: further ``DashConfig`` fields for every candidate (scope, protect_last, ...).
    Raises:
        ValueError: no samples, an empty grid, a ratio outside (0, 1), a negative max_loss, a bad setting.
    """
    from tqdm.auto import tqdm

    from .api import compress, get_handle

    if get_handle(model) is not None:
        raise ValueError("calibrate measures the model against itself unmodified: dashvl.restore(model) first")
    if isinstance(max_loss, bool) or not isinstance(max_loss, numbers.Real) or max_loss < 0:
        raise ValueError(f"max_loss must be a number >= 0 (nats per token); got {max_loss!r}")
    if isinstance(new_tokens, bool) or not isinstance(new_tokens, numbers.Integral) or new_tokens < 1:
        raise ValueError(f"new_tokens must be an int >= 1; got {new_tokens!r}")
    samples = list(samples)
    if not samples:
        raise ValueError("calibrate needs at least one sample (the model's inputs for one prompt)")
    if candidates is not None:
        grid = _check_grid("candidates", candidates, _check_candidate)
        for config in grid:
            _check_ratio(config.ratio)
    else:
        ratios = _check_grid("ratios", ratios, _check_ratio)
        kv = _check_grid("kv", kv, _check_kv)
        layers, methods = _check_grid("layers", layers, _no_check), _check_grid("methods", methods, _no_check)
        grid = [DashConfig(ratio=r, layer=l, kv=k, method=m, **settings)
                for m, l, r, k in itertools.product(methods, layers, ratios, kv)]  # every setting checked up front
    device = next(model.parameters()).device
    text_config = model.config.get_text_config()
    num_layers = text_config.num_hidden_layers
    for config in grid:
        config.resolve_layer(num_layers)  # a layer out of range: refused before any prompt runs
    inputs = [_inputs(s, device) for s in samples]
    pad = getattr(getattr(model, "generation_config", None), "pad_token_id", None)
    answers, base_nll = [], 0.0
    with torch.no_grad():
        for x in tqdm(inputs, desc="calibrate: reference answers", disable=not progress):
            out = model.generate(**x, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                                 pad_token_id=pad, eos_token_id=None, output_logits=True,
                                 return_dict_in_generate=True)  # full length: every sample reads back new_tokens
            answers.append(out.sequences[:, x["input_ids"].shape[1]:])
            # the unmodified model's own logits of its greedy answer: what _read_back would measure, without a
            # second generate (tests/test_calibrate.py holds the two equal)
            base_nll += _nll_and_agreement(out.logits, answers[-1])[0] / len(inputs)
    rows, seen = [], set()
    for config in tqdm(grid, desc="calibrate: settings", disable=not progress):
        layer = config.resolve_layer(num_layers)
        key = (config.method, layer, config.ratio, config.kv)
        if key in seen:  # e.g. layer=2 and a fraction that resolves to 2
            continue
        seen.add(key)
        config = dataclasses.replace(config, layer=layer)
        handle = compress(model, config)
        try:
            nll = agree = speed = 0.0
            for x, answer in zip(inputs, answers):
                n, a = _read_back(model, x, answer)
                full, halted = prefill_flops(text_config, handle.trace, 0)
                nll, agree, speed = nll + n, agree + a, speed + full / halted
        finally:
            handle.remove()
        k = len(inputs)
        rows.append({"method": config.method, "layer": layer, "ratio": config.ratio, "kv": config.kv,
                     "loss": nll / k - base_nll, "agreement": agree / k, "flops_speedup": speed / k, "config": config})
    pick = _pick(rows, max_loss)
    ok = pick is not None
    pick = pick or min(rows, key=lambda r: r["loss"])
    return Calibration(pick["config"], ok, [{k: v for k, v in r.items() if k != "config"} for r in rows],
                       base_nll, max_loss)
