"""The direct harness: greedy generation on the suite under each halting setting; scores and FLOPs limits.

    python -m longctx.evaluate --model smollm2-135m-instruct --tasks niah_single_1,vt --lengths 1024,2048 \\
        --n 10 --settings "none;dash:ratio=0.5,layer=12;random:ratio=0.5,layer=12;snapkv:ratio=0.5,layer=12" \\
        --out results.json

A setting is ``none`` (the unmodified model), ``<method>:key=value,...`` with a dashvl method
(``dashvl.compress(model, method=..., **settings)``), or a full-length reference of ``longctx.references.REFERENCES`` (run at full
length by ``longctx.masked.MaskedHalting``: same halting, no speedup; ratio, layer, kv and the score's options).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import torch

import dashvl
from dashvl.config import METHODS, DashConfig
from dashvl.flops import prefill_flops

from .masked import MaskedHalting
from .references import REFERENCES
from .scoring import score
from .tasks import SUITE_VERSION, TASKS, build_suite

__all__ = ["evaluate", "parse_settings", "table_settings", "label", "markdown", "main", "TABLE_RATIOS", "TABLE_LAYERS"]

# The text accuracy table (issue: real pretrained weights): the paper's DASH in both kv modes at layers 2,
# 0.25·L and 0.4·L (the paper's text default); every rival and dashvl's own criteria at 0.4·L; each at these ratios.
TABLE_RATIOS = (0.25, 0.4, 0.5, 0.667, 0.75)
TABLE_LAYERS = (2, 0.25, 0.4)
TABLE_RIVALS = ("random", "fastv", "snapkv", "streamingllm", "dash-sinks", "dash-avg", "dash-snap", "dash-q")


def table_settings(ratios=TABLE_RATIOS) -> list[dict | None]:
    """``--settings @table``: the unmodified model, then a row per (method, layer, kv, ratio)."""
    rows: list[dict | None] = [None]
    for layer in TABLE_LAYERS:
        for kv in ("drop", "keep"):
            rows += [{"method": "dash", "ratio": r, "layer": layer, "kv": kv} for r in ratios]
    for method in TABLE_RIVALS:
        for kv in (("drop", "keep") if method in ("dash-avg", "dash-snap", "dash-q") else ("drop",)):
            # scope="all": FastV's default scope is the image tokens; a text prompt has none
            rows += [{"method": method, "ratio": r, "layer": 0.4, "kv": kv, **({"scope": "all"} if method == "fastv" else {})}
                     for r in ratios]
    return rows


def parse_settings(text: str) -> list[dict | None]:
    """``"none;dash:ratio=0.5,layer=12"`` -> ``[None, {"method": "dash", "ratio": 0.5, "layer": 12}]``;
    ``"@table"`` -> ``table_settings()``."""
    if text.strip() == "@table":
        return table_settings()
    out = []
    for part in filter(None, (p.strip() for p in text.split(";"))):
        if part == "none":
            out.append(None)
            continue
        method, _, rest = part.partition(":")
        if method not in METHODS and method not in REFERENCES:
            raise ValueError(f"unknown method {method!r} in setting {part!r}; use 'none', a dashvl method "
                             f"{METHODS} or a full-length reference {tuple(REFERENCES)}")
        spec = {"method": method}
        for item in filter(None, rest.split(",")):
            key, eq, value = item.partition("=")
            if not eq:
                raise ValueError(f"setting items are key=value; got {item!r} in {part!r}")
            spec[key.strip()] = _value(value.strip())
        out.append(spec)
    return out


def _value(text: str):
    if text in ("True", "False"):
        return text == "True"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def label(spec: dict | None) -> str:
    """A short name for a setting: ``unmodified`` or ``dash r=0.5 l=12 drop``."""
    if spec is None:
        return "unmodified"
    rest = {k: v for k, v in spec.items() if k not in ("method", "ratio", "layer", "kv")}
    words = [spec["method"], f"r={spec.get('ratio', 0.5)}", f"l={spec.get('layer', 2)}", spec.get("kv", "drop")]
    return " ".join(words + [f"{k}={v}" for k, v in sorted(rest.items())])


class _Runner:
    """One setting installed on the model: ``with runner: generate``; ``flops(row)`` of the last prefill."""

    def __init__(self, model, spec):
        self.model, self.spec, self.text_config = model, spec, model.config.get_text_config()
        self.handle = self.masked = None

    def __enter__(self):
        spec = self.spec
        if spec is not None and spec["method"] in REFERENCES:
            options = {k: v for k, v in spec.items() if k != "method"}
            ratio, kv = options.pop("ratio", 0.5), options.pop("kv", "drop")
            layer = DashConfig(layer=options.pop("layer", 2)).resolve_layer(self.text_config.num_hidden_layers)
            self.masked = MaskedHalting(self.model, REFERENCES[spec["method"]], ratio, layer, kv, **options).__enter__()
        elif spec is not None:
            self.handle = dashvl.compress(self.model, **spec)
        return self

    def __exit__(self, *exc):
        if self.masked is not None:
            self.masked.__exit__(*exc)
        if self.handle is not None:
            self.handle.remove()

    def flops(self, row: int) -> tuple[int, int] | None:
        if self.masked is not None:
            return self.masked.flops(self.text_config, row)
        if self.handle is not None and self.handle.trace is not None:
            return prefill_flops(self.text_config, self.handle.trace, row)
        return None


def evaluate(model, tokenizer, task_names=None, lengths=(1024,), n_per_task: int = 10, settings=(None,),
             device=None, batch_size: int = 1, samples=None, keep_samples: bool = False, progress: bool = True) -> dict:
    """Scores of every setting on the suite.

    Args:
        settings: None (unmodified) or dicts: ``dashvl.compress`` keyword settings with ``method``, or a
            ``REFERENCES`` method with ratio / layer / kv and its options.
        device: where to run (the model is moved there); None: where the model is.
        samples: prebuilt ``Sample`` list (skips building); else ``build_suite(tokenizer, ...)``.
    Returns:
        ``{"scores": {label: {length: {task: score, "avg": mean}}}, "flops_speedup": {label: {length: x}},
        "seconds": {label: s}, "samples": [...] (when keep_samples)}``; lengths as strings (JSON keys).
    """
    from tqdm.auto import tqdm

    if device is not None:
        model.to(device)
    device = next(model.parameters()).device
    task_names = list(TASKS) if task_names is None else list(task_names)
    if samples is None:
        samples = build_suite(tokenizer, task_names, lengths, n_per_task, progress=progress)
    limit = getattr(model.config.get_text_config(), "max_position_embeddings", None)
    too_long = sorted({s.length for s in samples if limit and s.length > limit})
    if too_long:
        raise ValueError(f"lengths {too_long} exceed the model's max_position_embeddings ({limit})")
    groups = {}
    for s in samples:  # one generation budget per batch: batch within a task and length
        groups.setdefault((s.length, s.task), []).append(s)
    batches = [g[i:i + batch_size] for g in groups.values() for i in range(0, len(g), batch_size)]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    side, tokenizer.padding_side = tokenizer.padding_side, "left"  # generation continues at the right edge
    result = {"scores": {}, "flops_speedup": {}, "seconds": {}, "samples": [] if keep_samples else None}
    try:
        for spec in settings:
            name = label(spec)
            per, full, halted, start = {}, {}, {}, time.perf_counter()
            bar = tqdm(batches, desc=name, unit="batch", disable=not progress)
            with _Runner(model, spec) as runner:
                for batch in bar:
                    enc = tokenizer([s.prompt for s in batch], add_special_tokens=batch[0].add_special_tokens,
                                    return_tensors="pt", padding=True).to(device)
                    with torch.no_grad():
                        out = model.generate(**enc, max_new_tokens=batch[0].max_new_tokens, do_sample=False,
                                             pad_token_id=pad_id)
                    texts = tokenizer.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
                    for row, (s, text) in enumerate(zip(batch, texts)):
                        value = score(s.metric, text, s.answers)
                        per.setdefault(s.length, {}).setdefault(s.task, []).append(value)
                        fl = runner.flops(row)
                        if fl is not None:
                            full[s.length] = full.get(s.length, 0) + fl[0]
                            halted[s.length] = halted.get(s.length, 0) + fl[1]
                        if keep_samples:
                            result["samples"].append({"setting": name, "task": s.task, "length": s.length,
                                                      "index": s.index, "tokens": s.tokens, "answers": list(s.answers),
                                                      "prediction": text, "score": value})
            result["seconds"][name] = round(time.perf_counter() - start, 2)
            result["scores"][name] = {str(L): {**{t: sum(v) / len(v) for t, v in tasks.items()},
                                               "avg": sum(sum(v) / len(v) for v in tasks.values()) / len(tasks)}
                                      for L, tasks in sorted(per.items())}
            result["flops_speedup"][name] = {str(L): (full[L] / halted[L] if L in full else 1.0) for L in sorted(per)}
    finally:
        tokenizer.padding_side = side
    if not keep_samples:
        del result["samples"]
    return result


def markdown(result: dict, task_names) -> str:
    """One table per length: a row per setting, a column per task, the average and the FLOPs limit."""
    lines = []
    lengths = sorted({L for per in result["scores"].values() for L in per}, key=int)
    for L in lengths:
        lines += [f"**{L} tokens**", "", "| setting | " + " | ".join(task_names) + " | avg | FLOPs limit |",
                  "|---|" + "---|" * (len(task_names) + 2)]
        for name, per in result["scores"].items():
            row = per.get(L, {})
            cells = [f"{row[t]:.1f}" if t in row else "–" for t in task_names] + [f"{row.get('avg', float('nan')):.1f}"]
            lines.append(f"| {name} | " + " | ".join(cells) + f" | {result['flops_speedup'][name].get(L, 1.0):.2f}× |")
        lines.append("")
    return "\n".join(lines)


def _machine(device) -> dict:
    info = {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
            "device": str(device)}
    if torch.cuda.is_available() and str(device).startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def _versions() -> dict:
    import transformers
    return {"suite": SUITE_VERSION, "dashvl": dashvl.__version__, "torch": torch.__version__,
            "transformers": transformers.__version__}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m longctx.evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m-instruct", help="a dashvl.load_model name or a local folder")
    p.add_argument("--tasks", default=",".join(TASKS), help=f"comma-separated; known: {','.join(TASKS)}")
    p.add_argument("--lengths", default="1024,2048", help="comma-separated target lengths in tokens")
    p.add_argument("--n", type=int, default=10, help="samples per task and length")
    p.add_argument("--settings", default="none;dash:ratio=0.5,layer=12",
                   help="';'-separated settings (see above), or @table (the text accuracy table's rows)")
    p.add_argument("--shard", default="0/1", help="k/n: run only settings k, k+n, k+2n, ... (for parallel processes; "
                                                  "python -m longctx.report merges the shards)")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    p.add_argument("--dtype", default=None, choices=("float32", "bfloat16", "float16"),
                   help="default: bfloat16 on CUDA, float32 on the CPU")
    p.add_argument("--attn", default="sdpa", help="attn_implementation (the -masked references with kv=drop need sdpa or eager)")
    p.add_argument("--out", required=True, help="results JSON; the markdown table goes next to it (.md)")
    p.add_argument("--samples", action="store_true", help="also store every prediction in the JSON")
    a = p.parse_args(argv)
    task_names = [t for t in a.tasks.split(",") if t]
    lengths = [int(x) for x in a.lengths.split(",") if x]
    settings = parse_settings(a.settings)
    try:
        k, n = (int(x) for x in a.shard.split("/"))
        assert 0 <= k < n
    except (ValueError, AssertionError):
        p.error(f"--shard must be k/n with 0 <= k < n; got {a.shard!r}")
    settings = settings[k::n]
    if a.n < 1 or a.batch_size < 1:
        p.error("--n and --batch-size must be >= 1")
    dtype = getattr(torch, a.dtype) if a.dtype else None
    model, tokenizer = dashvl.load_model(a.model, device=a.device, dtype=dtype, attn_implementation=a.attn)
    start = time.time()
    result = evaluate(model, tokenizer, task_names, lengths, a.n, settings, batch_size=a.batch_size,
                      keep_samples=a.samples)
    device = next(model.parameters()).device
    record = {"suite_version": SUITE_VERSION, "command": shlex.join([sys.executable, "-m", "longctx.evaluate", *(argv or sys.argv[1:])]),
              "created": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": _machine(device), "versions": _versions(),
              "model": a.model, "num_layers": model.config.get_text_config().num_hidden_layers, "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
              "attn_implementation": a.attn, "tasks": task_names, "lengths": lengths, "n_per_task": a.n,
              "batch_size": a.batch_size, "shard": a.shard, "settings": [{"label": label(s), "spec": s} for s in settings],
              "wall_seconds": round(time.time() - start, 1), **result}
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=1) + "\n")
    table = markdown(result, task_names)
    out.with_suffix(".md").write_text(f"`{record['command']}`\n\n{table}")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
