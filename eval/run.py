"""Compare DASH settings on lmms-eval tasks in one run; see eval/README.md.

    python eval/run.py --tasks synth_mme,synth_textvqa --ratio 0,0.5,0.75 --method dash,random,fastv,downsample
    accelerate launch --num_processes 8 eval/run.py --model Qwen/Qwen2-VL-7B-Instruct --tasks mme,textvqa_val --online

One model is loaded and evaluated under each configuration: ratio 0 (the unmodified model, run once) and every
method x every ratio > 0. Under --output: a folder per configuration with lmms-eval's results (results.json,
samples_<task>.jsonl) and the per-sample prefill stats (prefill.jsonl); comparison.md and comparison.csv with,
per configuration, each task's score and its % of the baseline's, the mean prefill time in ms (vision tower and
the LLM's prompt pass), the mean prompt tokens and the mean tokens halted per sample.

Exit status: 0 when every configuration scored every task; 2 for a bad argument; 1 when a task cannot load, the
model cannot load, or lmms-eval fails (its own CLI exits 0 then; this script checks the results itself).
Offline by default (HF_HUB_OFFLINE=1, HF_DATASETS_OFFLINE=1): tasks whose data is on the hub need --online.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import datetime
import json
import os
import sys
import traceback
from pathlib import Path

from synthvqa import TASKS_DIR  # the offline tasks (the bundled models' suite)

OFFLINE_TASKS = ("synth_mme", "synth_textvqa", "synth_vqa")
DEFAULT_TASKS = ("synth_mme", "synth_textvqa")  # MME- and TextVQA-shaped; synth_vqa is 6 x 200 rows
# Setting fields the run sweeps (comma lists), with their defaults; every other field takes one value
SWEPT = {"method": ["dash"], "ratio": [0.0, 0.5, 0.75]}


class RunError(Exception):
    """A failure with a message for the user; ``code`` is the exit status."""

    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code


# ------------------------------------------------------------------------------------------------ arguments

def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer; got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1; got {value}")
    return value


def _names(text: str) -> list[str]:
    names = list(dict.fromkeys(x.strip() for x in text.split(",") if x.strip()))
    if not names:
        raise argparse.ArgumentTypeError("give at least one name")
    return names


def build_parser() -> argparse.ArgumentParser:
    from dashvl.setting import Setting

    p = argparse.ArgumentParser(prog="eval/run.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="offline tasks: " + ", ".join(OFFLINE_TASKS))
    p.add_argument("--model", default=None, help="bundled name, tiny-random-qwen2-vl / tiny-random-llava, local folder "
                   "or hub id (default: dashvl.models.DEFAULT_MODEL); or a pretrained text LM (smollm2-135m-instruct, "
                   "gemma-3-270m), which runs the long-context suite (--tasks longctx or longctx_<task>)")
    p.add_argument("--tasks", type=_names, default=list(DEFAULT_TASKS),
                   help=f"comma-separated lmms-eval tasks (default: {','.join(DEFAULT_TASKS)})")
    # one flag per Setting field (default: SWEPT's, else Setting's); SUPPRESS: absent unless given, so that
    # parse_args can tell a flag from the same field in --model-args
    for name in Setting.fields():
        default = SWEPT.get(name, getattr(Setting(), name))
        shown = ",".join(map(str, default)) if name in SWEPT else default
        what = "comma-separated, each " if name in SWEPT else ""
        note = " (every configuration but the baseline)" if name == "vision_ratio" else ""
        p.add_argument(_flag(name), type=Setting.cli_type(name, many=name in SWEPT), default=argparse.SUPPRESS,
                       help=f"{what}{Setting.describe(name)}{note} (default: {shown})")
    p.add_argument("--limit", type=_positive, default=None, help="first N samples of each task (text LMs: samples "
                   "per task and length, default 10)")
    p.add_argument("--lengths", type=lambda t: [_positive(x) for x in _names(t)], default=[1024],
                   help="text LMs: comma-separated prompt lengths in tokens for the long-context suite (default 1024)")
    p.add_argument("--batch-size", type=_positive, default=1)
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu (per process under accelerate)")
    p.add_argument("--model-args", default="", help="more model_args for the lmms-eval model, e.g. "
                   "max_pixels=200704,attn_implementation=flash_attention_2,dtype=bfloat16; a setting field "
                   "(kv=keep, ratio=0.5, ...) counts as its flag (--kv keep, --ratio 0.5)")
    p.add_argument("--output", type=Path, default=None, help="results folder (default: out/eval/<date-time>)")
    p.add_argument("--include-path", action="append", default=[], help="another folder of lmms-eval task YAMLs")
    p.add_argument("--online", action="store_true", help="allow the Hugging Face hub (for tasks like mme, textvqa_val)")
    p.add_argument("--verbosity", default="WARNING", help="lmms-eval's log level (default WARNING)")
    return p


def _split_model_args(text: str) -> tuple[dict[str, str], str]:
    """``({setting field: its text}, the other model_args)`` from a model_args string."""
    from dashvl.setting import Setting

    fields, rest = {}, []
    for item in text.split(","):
        key, sep, value = item.partition("=")
        if sep and key.strip() in Setting.fields():
            fields[key.strip()] = value
        elif item.strip():
            rest.append(item)
    return fields, ",".join(rest)


def parse_args(argv=None) -> argparse.Namespace:
    """The arguments; each Setting field from its flag, or from --model-args (the same), or its default."""
    from dashvl.setting import Setting

    parser = build_parser()
    args = parser.parse_args(argv)
    given, args.model_args = _split_model_args(args.model_args)
    for name, text in given.items():
        if hasattr(args, name):
            parser.error(f"{name} is given twice, by {_flag(name)} and by --model-args: give it once")
        try:
            setattr(args, name, Setting.cli_type(name, many=name in SWEPT)(text))
        except argparse.ArgumentTypeError as err:
            parser.error(f"--model-args {name}={text}: {err}")
    args._given = {name for name in Setting.fields() if hasattr(args, name)}  # run_text's defaults fill the rest
    for name in Setting.fields():
        if not hasattr(args, name):
            setattr(args, name, list(SWEPT[name]) if name in SWEPT else getattr(Setting(), name))
    if args.limit is not None and args.limit % 2 and any("mme" in t for t in args.tasks):
        parser.error(f"--limit must be even with MME-style tasks ({', '.join(t for t in args.tasks if 'mme' in t)}): "
                     f"their score pairs each image's Yes and No question; got {args.limit}")
    args._parser = parser
    return args


# ------------------------------------------------------------------------------------------------ the run

def settings_for(args) -> list:
    """The configurations, baseline first: ratio 0 once, then each method at each ratio > 0."""
    from dashvl.setting import Setting

    common = {name: getattr(args, name) for name in Setting.fields() if name not in SWEPT}
    try:
        out = [Setting(method=args.method[0], ratio=0, **{**common, "vision_ratio": 0.0})] if 0 in args.ratio else []
        out += [Setting(method=m, ratio=r, **common) for m in args.method for r in args.ratio
                if r > 0 or args.vision_ratio]
    except ValueError as err:
        raise RunError(f"bad setting: {err}", 2) from err
    return out


def task_manager_for(tasks: list[str], include: list[str], verbosity: str):
    """lmms-eval's TaskManager: only our task folders when they hold every task (indexing lmms-eval's ~2,000
    takes seconds), else lmms-eval's too."""
    from lmms_eval.tasks import TaskManager

    paths = [str(TASKS_DIR)] + [str(Path(p).resolve()) for p in include]
    local = TaskManager(verbosity, include_path=paths, include_defaults=False)
    if all(t in local.all_tasks for t in tasks):
        return local, set(local.all_tasks)
    manager = TaskManager(verbosity, include_path=paths)
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        raise RunError(f"unknown task(s): {', '.join(unknown)}. Offline tasks: {', '.join(OFFLINE_TASKS)}; "
                       "lmms-eval's are listed by `lmms-eval tasks list`", 2)
    return manager, set(local.all_tasks)


def _cause(err: BaseException) -> str:
    """What failed: lmms-eval retries some steps (tenacity) and raises RetryError from the real error."""
    while err.__cause__ is not None:
        err = err.__cause__
    return f"{type(err).__name__}: {err}"


def check_tasks_load(tasks, manager, local: set, online: bool) -> None:
    """Load each task once (its dataset included) before the model, so that a task that cannot load fails fast."""
    from lmms_eval.tasks import get_task_dict

    for name in tasks:
        try:
            loaded = get_task_dict([name], manager)
            error = None if loaded else "lmms-eval returned no task"
        except Exception as err:  # lmms-eval and datasets raise many kinds; each is reported below
            error = _cause(err)
        if error is None:
            continue
        if not online and name not in local:
            dataset = _dataset_of(manager, name)
            raise RunError(f"task {name!r} needs the Hugging Face hub{f' (dataset {dataset})' if dataset else ''} "
                           f"and this run is offline. Offline tasks: {', '.join(OFFLINE_TASKS)}. Where the hub is "
                           f"reachable (or the dataset is in the local cache), add --online. ({error})")
        raise RunError(f"task {name!r} could not load: {error}")


def _dataset_of(manager, name: str) -> str | None:
    try:
        config = manager._get_config(name)
    except Exception:  # a group, or an index entry without a YAML: no single dataset to name
        return None
    return config.get("dataset_path") if isinstance(config, dict) else None


def load_model(args):
    """The dashvl lmms-eval model for --model, with --model-args."""
    import dashvl.lmms_eval_plugin as bridge
    from dashvl.setting import Setting
    from dashvl.models import DEFAULT_MODEL
    from lmms_eval.utils import simple_parse_args_string

    extra = simple_parse_args_string(args.model_args)
    clash = [k for k in extra if k in Setting.fields() or k in ("pretrained", "batch_size", "device")]
    if clash:  # a setting field here would be overridden by each configuration: parse_args takes them out
        raise RunError(f"--model-args sets {', '.join(clash)}: use --model, --batch-size, --device and the "
                       "setting flags for these", 2)
    name = args.model or DEFAULT_MODEL
    try:
        cls = getattr(bridge, bridge.MODEL_IDS[bridge.model_id_for(name)])
        return cls(pretrained=name, batch_size=args.batch_size, device=args.device, **extra)
    except (TypeError, ValueError) as err:
        raise RunError(f"cannot load model {name!r}: {err}", 2) from err
    except Exception as err:
        hint = "" if args.online else " (this run is offline: a hub model must be in the local cache, or add --online)"
        raise RunError(f"cannot load model {name!r}: {type(err).__name__}: {err}{hint}") from err


def _gather(stats: list[dict]) -> list[dict]:
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return stats
    parts = [None] * dist.get_world_size()
    dist.all_gather_object(parts, stats)
    return [s for part in parts for s in part]


def scores_of(results: dict | None, tasks: list[str], label: str) -> dict[str, tuple[str, float]]:
    """``{task: (metric, value)}`` for every scored task, or RunError when lmms-eval left one unscored."""
    if not results or not results.get("results"):
        raise RunError(f"lmms-eval returned no results for configuration {label}")
    out = {}
    for task, metrics in results["results"].items():
        for key, value in metrics.items():
            metric = key.split(",")[0]
            if metric.endswith("_stderr") or metric in ("alias", "submission", "samples") or "," not in key:
                continue
            if isinstance(value, (int, float)) and not isinstance(value, bool) and value == value:
                out[task] = (metric, float(value))
                break
    groups = results.get("group_subtasks", {})
    for task in tasks:
        subtasks = groups.get(task) or [task]
        missing = [t for t in subtasks if t not in out]
        if missing:
            raise RunError(f"lmms-eval gave no score for {', '.join(missing)} in configuration {label} "
                           f"(its results: {json.dumps(results['results'].get(missing[0]), default=str)})")
    return out


def _json_default(o):
    try:
        return o.item()
    except AttributeError:
        return list(o) if isinstance(o, (set, tuple)) else str(o)


def write_configuration(folder: Path, results: dict, stats: list[dict]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    samples = results.pop("samples", {}) or {}
    (folder / "results.json").write_text(json.dumps(results, indent=2, default=_json_default))
    for task, rows in samples.items():
        with open(folder / f"samples_{task}.jsonl", "w") as f:
            for row in rows:
                row = {k: v for k, v in row.items() if k != "arguments"}
                f.write(json.dumps(row, default=_json_default) + "\n")
    with open(folder / "prefill.jsonl", "w") as f:
        for row in stats:
            f.write(json.dumps(row) + "\n")


def table_rows(runs: list[tuple], tasks: list[str]) -> tuple[list[str], list[list]]:
    """Header and rows (raw values) of the comparison: one row per configuration."""
    scored = list(dict.fromkeys(t for _, scores, _ in runs for t in scores))
    base = next((scores for s, scores, _ in runs if s.baseline), None)
    header = ["config", "method", "ratio", "layer", "kv"]
    for t in scored:
        metric = runs[0][1][t][0]
        header += [f"{t} {metric}", f"{t} % of baseline"]
    header += ["prefill ms", "prompt tokens", "tokens halted", "samples"]
    rows = []
    for setting, scores, stats in runs:
        dash = not setting.baseline and setting.method != "downsample"
        row = [setting.label, "-" if setting.baseline else setting.method, setting.ratio,
               setting.layer if dash else "-", setting.kv if dash else "-"]
        for t in scored:
            value = scores[t][1]
            b = base[t][1] if base else None
            row += [value, 100 * value / b if b else None]
        n = len(stats)
        row += [sum(s["prefill_ms"] for s in stats) / n if n else None,
                sum(s["prompt_tokens"] for s in stats) / n if n else None,
                sum(s["halted"] for s in stats) / n if n else None, n]
        rows.append(row)
    return header, rows


def _fmt(value, column: str) -> str:
    if value is None:
        return "—"
    if isinstance(value, str):
        return value
    if column.endswith("% of baseline"):
        return f"{value:.1f}%"
    if column in ("prefill ms", "prompt tokens", "tokens halted", "seconds") or column.endswith(" score"):
        return f"{value:.1f}"
    if column == "FLOPs limit":
        return f"{value:.2f}×"
    if column in ("ratio", "samples", "layer"):
        return f"{value:g}"
    return f"{value:.4g}"


def write_table(folder: Path, header: list[str], rows: list[list]) -> str:
    with open(folder / "comparison.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows([["" if v is None else v for v in row] for row in rows])
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_fmt(v, c) for v, c in zip(row, header)) + " |" for row in rows]
    text = "\n".join(lines) + "\n"
    (folder / "comparison.md").write_text(text)
    return text


def _cli_args(folder: Path) -> argparse.Namespace:
    """lmms-eval's CLI defaults (its evaluator and tasks read some), with output_path for submission files."""
    from lmms_eval.__main__ import parse_eval_args

    argv, sys.argv = sys.argv, sys.argv[:1]
    try:
        _, defaults = parse_eval_args()
    finally:
        sys.argv = argv
    defaults.output_path = str(folder)
    return defaults


# ------------------------------------------------------------------------------------------------ text LMs

TEXT_PREFIX = "longctx_"  # the long-context suite's tasks in --tasks: longctx_niah_single_1, ...; "longctx": all


def text_tasks(tasks: list[str]) -> list[str]:
    """The suite's task names for ``--tasks`` (``longctx`` = all 13), or RunError naming them."""
    from longctx import TASKS

    out = []
    for t in tasks:
        if t == "longctx":
            out += list(TASKS)
        elif t.startswith(TEXT_PREFIX) and t[len(TEXT_PREFIX):] in TASKS:
            out.append(t[len(TEXT_PREFIX):])
        else:
            raise RunError(f"a text LM runs the long-context suite: --tasks takes longctx (all) or "
                           f"{', '.join(TEXT_PREFIX + n for n in TASKS)}; got {t!r}", 2)
    return list(dict.fromkeys(out))


def run_text(args) -> int:
    """A pretrained text LM (``dashvl.pretrained``) on the long-context suite, every configuration, one table.

    The suite runs through ``longctx.evaluate`` (greedy generation, each task's RULER-style metric); the table
    has the same shape as the lmms-eval runs', with the prefill FLOPs limit in place of the prefill times."""
    import dashvl
    from longctx.evaluate import evaluate

    from dashvl.config import TEXT_DEFAULTS

    tasks = text_tasks(args.tasks)
    # what compress() does on a text LM: the flags not given take dashvl.config.TEXT_DEFAULTS (the ratio sweep
    # keeps its baseline: 0 and the text default ratio)
    given = getattr(args, "_given", set())
    if "method" not in given:
        args.method = [TEXT_DEFAULTS["method"]]
    if "layer" not in given:
        args.layer = TEXT_DEFAULTS["layer"]
    if "ratio" not in given:
        args.ratio = [0.0, TEXT_DEFAULTS["ratio"]]
    settings = settings_for(args)
    model, tokenizer = dashvl.load_model(args.model, device=args.device)
    layers = model.config.get_text_config().num_hidden_layers
    for setting in settings:
        try:
            setting.check(layers)
        except ValueError as err:
            raise RunError(f"bad setting {setting.label} for this model: {err}", 2) from err
    specs = [None if s.baseline else {k: v for k, v in dataclasses.asdict(s.dash_config()).items()
                                      if k in ("method", "ratio", "layer", "kv", "scope", "protect_last", "seed")}
             for s in settings]
    output = args.output or Path("out/eval") / datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    output.mkdir(parents=True, exist_ok=True)
    result = evaluate(model, tokenizer, tasks, args.lengths, args.limit or 10, specs, batch_size=args.batch_size,
                      keep_samples=True)
    names = list(result["scores"])
    header = ["config", "method", "ratio", "layer", "kv"]
    for t in tasks + ["avg"]:
        header += [f"{t} score", f"{t} % of baseline"]
    header += ["FLOPs limit", "seconds"]
    rows, base = [], None
    for setting, name in zip(settings, names):
        per = result["scores"][name]
        lengths = sorted(per, key=int)
        score = {t: sum(per[L][t] for L in lengths) / len(lengths) for t in tasks + ["avg"]}
        base = score if setting.baseline and base is None else base
        row = [setting.label, "-" if setting.baseline else setting.method, setting.ratio,
               "-" if setting.baseline else setting.layer, "-" if setting.baseline else setting.kv]
        for t in tasks + ["avg"]:
            row += [score[t], 100 * score[t] / base[t] if base and base[t] else None]
        flops = result["flops_speedup"][name]
        rows.append(row + [sum(flops.values()) / len(flops), result["seconds"][name]])
    table = write_table(output, header, rows)
    with open(output / "samples.jsonl", "w") as f:
        for row in result["samples"]:
            f.write(json.dumps(row) + "\n")
    (output / "run.json").write_text(json.dumps({
        "argv": sys.argv, "model": args.model, "tasks": tasks, "lengths": args.lengths, "n_per_task": args.limit or 10,
        "settings": [s.__dict__ for s in settings]}, indent=2, default=str))
    print(f"\n{table}\nresults: {output}")
    return 0


def run(args) -> int:
    from tqdm import tqdm

    from dashvl.pretrained import PRETRAINED

    if args.model in PRETRAINED:
        return run_text(args)
    if any(t == "longctx" or t.startswith(TEXT_PREFIX) for t in args.tasks):
        raise RunError(f"the long-context tasks run on a text LM: --model {' or '.join(PRETRAINED)}", 2)
    settings = settings_for(args)
    try:
        from lmms_eval import evaluator
    except ImportError as err:
        raise RunError(f"lmms-eval is not installed ({err}): pip install -c constraints.txt -e '.[eval]'") from err
    manager, local = task_manager_for(args.tasks, args.include_path, args.verbosity)
    check_tasks_load(args.tasks, manager, local, args.online)
    lm = load_model(args)
    for setting in settings:  # every setting must fit this model before hours go into the first one
        try:
            lm.configure(setting)
        except ValueError as err:
            raise RunError(f"bad setting {setting.label} for this model: {err}", 2) from err
    main = lm.rank == 0
    output = args.output or Path("out/eval") / datetime.datetime.now().strftime("%Y%m%d-%H%M%S")

    runs = []
    for setting in tqdm(settings, desc="configurations", disable=not main):
        lm.configure(setting)
        folder = output / setting.label
        try:
            results = evaluator.simple_evaluate(
                model=lm, tasks=list(args.tasks), limit=args.limit, batch_size=args.batch_size, device=args.device,
                log_samples=True, task_manager=manager, verbosity=args.verbosity,
                cli_args=_cli_args(folder))
        except Exception as err:
            traceback.print_exc()
            raise RunError(f"lmms-eval failed on configuration {setting.label}: {_cause(err)}") from err
        stats = _gather(lm.pop_stats())
        if not main:
            continue
        scores = scores_of(results, args.tasks, setting.label)
        write_configuration(folder, results, stats)
        runs.append((setting, scores, stats))
        tqdm.write(f"{setting.label}: " + ", ".join(f"{t} {m} {v:.4g}" for t, (m, v) in scores.items()))
    if main:
        header, rows = table_rows(runs, args.tasks)
        table = write_table(output, header, rows)
        (output / "run.json").write_text(json.dumps({
            "argv": sys.argv, "model": args.model or lm.pretrained, "tasks": args.tasks, "limit": args.limit,
            "batch_size": args.batch_size, "world_size": lm.world_size,
            "settings": [s.__dict__ for s in settings]}, indent=2, default=str))
        print(f"\n{table}\nresults: {output}")
    return 0


def main(argv=None) -> int:
    # --online first: importing dashvl (the flags come from dashvl.setting) imports huggingface_hub, and it
    # and datasets read these once
    online = argparse.ArgumentParser(add_help=False)
    online.add_argument("--online", action="store_true")
    if not online.parse_known_args(argv)[0].online:
        for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
            os.environ[var] = "1"
    args = parse_args(argv)
    try:
        return run(args)
    except RunError as err:
        if err.code == 2:
            args._parser.error(str(err))  # usage line and exit status 2, like argparse's own errors
        print(f"eval/run.py: error: {err}", file=sys.stderr)
        return err.code


if __name__ == "__main__":
    sys.exit(main())
