"""The bundled models' accuracy per question family through the evaluation bridge (lmms-eval, eval/run.py).

    python bench/accuracy_bridge.py              # runs eval/run.py on synth_vqa for both models, then the table
    python bench/accuracy_bridge.py --reuse      # the table from the last run's folders only

Per model: ``eval/run.py --tasks synth_vqa --ratio 0,0.5,0.75 --method dash,random`` (kv drop) and
``--ratio 0.5,0.75 --method dash --kv keep``, 200 questions per family, on the CPU. Writes the section between
the ``bridge`` markers of ``bench/ACCURACY.md`` (``bench/accuracy.py`` keeps that section when it rewrites the
file); the runs' folders stay under ``bench/results/bridge/``.
"""
from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
FAMILIES = ("existence", "colour", "shape", "count", "position", "reading")
START, END = "<!-- bridge:start -->", "<!-- bridge:end -->"


def runs(model: str, layer: str, limit: int | None):
    base = [sys.executable, os.path.join(ROOT, "eval", "run.py"), "--model", model, "--tasks", "synth_vqa",
            "--layer", layer, "--device", "cpu"] + (["--limit", str(limit)] if limit else [])
    out = os.path.join(HERE, "results", "bridge", model)
    return [(out, base + ["--ratio", "0,0.5,0.75", "--method", "dash,random", "--output", out]),
            (out + "-keep", base + ["--ratio", "0.5,0.75", "--method", "dash", "--kv", "keep", "--output", out + "-keep"])]


def rows_of(folder: str, keep: bool) -> list[tuple[str, list[float], float, float]]:
    out = []
    for r in csv.DictReader(open(os.path.join(folder, "comparison.csv"))):
        label = "unmodified" if r["config"] == "baseline" else f"{r['method']} {'keep' if keep else 'drop'} {r['ratio']}"
        out.append((label, [100 * float(r[f"synth_vqa_{f} exact_match"]) for f in FAMILIES],
                    100 * float(r["synth_vqa exact_match"]), float(r["tokens halted"]) / float(r["prompt tokens"])))
    return out


def section(models, layer, limit, minutes, root=os.path.join(HERE, "results", "bridge")) -> str:
    n = limit or 200
    lines = [START, "## Through the evaluation bridge", "",
             f"`python bench/accuracy_bridge.py` on the CPU{f' ({minutes:.0f} min)' if minutes else ''}: lmms-eval runs the `synth_vqa` task group "
             f"(eval/README.md) through `eval/run.py`, {n} test questions per family, greedy, exact match (%); "
             f"layer {layer}, scope all. The same questions as the model cards' first {n} per family, asked with "
             "lmms-eval's prompt (the question and \"Answer the question using a single word or phrase.\"). "
             "\"halted\": the share of prompt tokens halted.", ""]
    for model in models:
        lines += [f"### {model}", "", "| setting | " + " | ".join(FAMILIES) + " | mean | halted |",
                  "|---|" + "---|" * (len(FAMILIES) + 2)]
        got = rows_of(os.path.join(root, model), False)
        keep = rows_of(os.path.join(root, model + "-keep"), True)
        order = got[:1] + sorted(got[1:] + keep, key=lambda r: (r[0].split()[-1], r[0]))
        for label, fam, mean, halted in order:
            lines.append(f"| {label} | " + " | ".join(f"{v:.1f}" for v in fam) + f" | {mean:.1f} | {100 * halted:.0f}% |")
        lines.append("")
    lines.append(END)
    return "\n".join(lines)


def marked(text: str, start: str = START, end: str = END) -> tuple[int, int] | None:
    """Where the section from ``start`` to ``end`` (both included) lies in ``text``, or None."""
    if start in text and end in text:
        return text.index(start), text.index(end) + len(end)
    return None


def write_section(path: str, text: str, start: str = START, end: str = END) -> None:
    """Put ``text`` (markers included) in place of the section between ``start`` and ``end`` of the file at
    ``path``, or at its end."""
    old = open(path).read() if os.path.exists(path) else ""
    where = marked(old, start, end)
    if where:
        new = old[:where[0]] + text + old[where[1]:]
    else:
        new = old.rstrip("\n") + "\n\n" + text + "\n"
    with open(path, "w") as f:
        f.write(new)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="qwen2-vl-synth,llava-synth")
    p.add_argument("--layer", default="1")
    p.add_argument("--limit", type=int, default=None, help="questions per family (default: all 200)")
    p.add_argument("--reuse", action="store_true", help="only build the table from bench/results/bridge/")
    p.add_argument("--out", default=os.path.join(HERE, "ACCURACY.md"))
    args = p.parse_args(argv)
    models = args.models.split(",")
    start = time.time()
    if not args.reuse:
        env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
        for model in models:
            for folder, cmd in runs(model, args.layer, args.limit):
                print(" ".join(cmd), flush=True)
                proc = subprocess.run(cmd, cwd=ROOT, env=env)
                if proc.returncode:
                    sys.exit(f"eval/run.py failed ({proc.returncode}) for {model}; see above")
    text = section(models, args.layer, args.limit, None if args.reuse else (time.time() - start) / 60)
    write_section(args.out, text)
    print(text)


if __name__ == "__main__":
    main()
