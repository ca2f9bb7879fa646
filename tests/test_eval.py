"""eval/run.py and the lmms-eval plugin (dashvl.lmms_eval_plugin), end to end on the CPU with the tiny Qwen2-VL, offline.

lmms-eval runs in subprocesses only: importing it here would cost ~10 s and its llava_hf module turns every
warning off for the rest of the session.
"""
import csv
import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(importlib.util.find_spec("lmms_eval") is None,
                                reason="lmms-eval is not installed: pip install -c constraints.txt -e '.[eval]'")

ROOT = Path(__file__).resolve().parents[1]
RUN = ROOT / "eval" / "run.py"
SMALL = "max_pixels=50176"  # <= 64 visual tokens per image: a quick CPU run
# OMP_NUM_THREADS=1: on a small CPU box lmms-eval's helper threads and torch's OpenMP pool oversubscribe it badly
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def run(*args, timeout=240):
    return subprocess.run([sys.executable, *map(str, args)], cwd=ROOT, env=ENV, capture_output=True, text=True,
                          timeout=timeout)


def responses(path: Path) -> dict:
    """doc_id -> the model's answer, from a samples_<task>.jsonl."""
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return {r["doc_id"]: r["filtered_resps"] for r in rows}


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep")
    proc = run(RUN, "--model", "tiny-random-qwen2-vl", "--tasks", "synth_mme,synth_textvqa", "--ratio", "0,0.5",
               "--limit", "2", "--model-args", SMALL, "--output", out)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, proc


def test_sweep_writes_results_and_a_table_row_per_ratio(sweep):
    out, proc = sweep
    for label in ("baseline", "dash-0.5"):
        results = json.loads((out / label / "results.json").read_text())
        assert set(results["results"]) == {"synth_mme", "synth_textvqa"}
        for task in ("synth_mme", "synth_textvqa"):
            assert len(responses(out / label / f"samples_{task}.jsonl")) == 2
        stats = [json.loads(line) for line in (out / label / "prefill.jsonl").read_text().splitlines()]
        assert sorted(s["task"] for s in stats) == ["synth_mme"] * 2 + ["synth_textvqa"] * 2
        assert all(s["prefill_ms"] > 0 and s["visual_tokens"] > 0 for s in stats)
        assert all((s["halted"] > 0) == (label != "baseline") for s in stats)
    with open(out / "comparison.csv") as f:
        table = list(csv.DictReader(f))
    assert [row["config"] for row in table] == ["baseline", "dash-0.5"]
    assert [float(row["ratio"]) for row in table] == [0, 0.5]
    for column in ("synth_mme mme_perception_score", "synth_textvqa exact_match", "synth_mme % of baseline",
                   "prefill ms", "tokens halted"):
        assert column in table[0]
    assert float(table[0]["tokens halted"]) == 0 < float(table[1]["tokens halted"])
    md = (out / "comparison.md").read_text().splitlines()
    assert len(md) == 2 + 2 and md[2].startswith("| baseline |")
    assert "| dash-0.5 |" in proc.stdout


def test_ratio_0_is_lmms_evals_own_qwen2_vl_and_the_entry_point_model_matches_run_py(sweep, tmp_path):
    """lmms-eval's stock qwen2_vl wrapper on the same weights gives run.py's baseline answers and scores; the
    dashvl_qwen2_vl model found through the lmms_eval.models entry point gives run.py's dash-0.5 answers."""
    out, _ = sweep
    script = textwrap.dedent(f"""
        import json
        import dashvl
        model, processor = dashvl.load_model("tiny-random-qwen2-vl", device="cpu")
        model.save_pretrained({str(tmp_path / 'tiny')!r}); processor.save_pretrained({str(tmp_path / 'tiny')!r})
        from lmms_eval import evaluator
        from lmms_eval.tasks import TaskManager
        tasks = TaskManager("WARNING", include_path={str(ROOT / 'synthvqa' / 'tasks')!r}, include_defaults=False)
        out = {{}}
        for name, model, args in [
                ("stock", "qwen2_vl", "pretrained={tmp_path / 'tiny'},device=cpu,device_map=cpu,{SMALL}"),
                ("plugin", "dashvl_qwen2_vl",
                 "pretrained=tiny-random-qwen2-vl,device=cpu,{SMALL},method=dash,ratio=0.5")]:
            r = evaluator.simple_evaluate(model=model, model_args=args, tasks=["synth_mme", "synth_textvqa"], limit=2,
                                          log_samples=True, task_manager=tasks, verbosity="WARNING")
            out[name] = {{"results": r["results"], "responses": {{t: {{s["doc_id"]: s["filtered_resps"] for s in rows}}
                                                                 for t, rows in r["samples"].items()}}}}
        print("RESULT" + json.dumps(out))
    """)
    proc = run("-c", script)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    got = json.loads(proc.stdout.split("RESULT", 1)[1])
    for name, label in (("stock", "baseline"), ("plugin", "dash-0.5")):
        mine = json.loads((out / label / "results.json").read_text())["results"]
        for task in ("synth_mme", "synth_textvqa"):
            want = responses(out / label / f"samples_{task}.jsonl")
            assert {int(k): v for k, v in got[name]["responses"][task].items()} == want, (name, task)
            metric = next(k for k in mine[task] if "," in k and "stderr" not in k)
            assert got[name]["results"][task][metric] == mine[task][metric], (name, task)


def test_a_failing_evaluation_exits_nonzero(tmp_path):
    """lmms-eval's own CLI exits 0 when an evaluation raises; run.py must not."""
    task = tmp_path / "broken"
    task.mkdir()
    (task / "data.jsonl").write_text('{"question": "q", "answer": "a"}\n')
    (task / "utils.py").write_text(textwrap.dedent("""
        def doc_to_visual(doc):
            return []

        def doc_to_text(doc, lmms_eval_specific_kwargs=None):
            return doc["question"]

        def aggregate(scores):  # runs after the model answered
            raise RuntimeError("broken on purpose")
    """))
    (task / "broken.yaml").write_text(textwrap.dedent("""
        task: broken_task
        dataset_path: json
        dataset_kwargs: {data_files: {test: data.jsonl}}
        test_split: test
        output_type: generate_until
        doc_to_visual: !function utils.doc_to_visual
        doc_to_text: !function utils.doc_to_text
        doc_to_target: answer
        generation_kwargs: {max_new_tokens: 4}
        metric_list: [{metric: exact_match, aggregation: !function utils.aggregate, higher_is_better: true}]
    """))
    proc = run(RUN, "--model", "tiny-random-qwen2-vl", "--tasks", "broken_task", "--ratio", "0", "--limit", "1",
               "--include-path", task, "--output", tmp_path / "out")
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "lmms-eval failed on configuration baseline: RuntimeError: broken on purpose" in proc.stderr
    assert not (tmp_path / "out" / "comparison.md").exists()


def test_a_hub_task_offline_names_the_offline_tasks(tmp_path):
    proc = run(RUN, "--model", "tiny-random-qwen2-vl", "--tasks", "mme", "--limit", "2", "--output", tmp_path)
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "needs the Hugging Face hub" in proc.stderr and "synth_mme, synth_textvqa" in proc.stderr
    assert "--online" in proc.stderr


@pytest.mark.parametrize("args, message", [
    (["--ratio", "0,1.5"], "ratio must be a number in [0, 1)"),
    (["--model-args", "kv=sometimes"], "--model-args kv=sometimes: kv must be one of ('drop', 'keep')"),
    (["--kv", "keep", "--model-args", "kv=keep"], "kv is given twice, by --kv and by --model-args"),
    (["--limit", "3", "--tasks", "synth_mme"], "--limit must be even"),
    (["--layer", "1.5"], "must lie in (0, 1)"),
    (["--vision-ratio", "1.5"], "vision_ratio must be a number in [0, 1)"),
    (["--vision-ratio", "0.5", "--method", "downsample"], "vision_ratio halts inside the vision tower"),
])
def test_a_bad_argument_gets_a_clear_message(args, message):
    proc = run(RUN, *args, timeout=60)
    assert proc.returncode == 2
    assert message in proc.stderr, proc.stderr


def test_vision_ratio_joins_every_configuration_but_the_baseline():
    from eval import run as runner
    args = runner.parse_args(["--ratio", "0,0.5", "--method", "dash,fastv", "--vision-ratio", "0.5",
                              "--vision-layer", "1"])
    settings = runner.settings_for(args)
    assert [s.label for s in settings] == ["baseline", "dash-0-v0.5", "dash-0.5-v0.5", "fastv-0-v0.5",
                                           "fastv-0.5-v0.5"]
    config = settings[2].dash_config()
    assert (config.ratio, config.vision_ratio, config.vision_layer) == (0.5, 0.5, 1)


def test_two_processes_give_the_answers_of_one(sweep, tmp_path):
    """accelerate launch on the CPU (gloo): requests are sharded over 2 processes, results gathered on rank 0."""
    out, _ = sweep
    proc = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", str(RUN),
         "--model", "tiny-random-qwen2-vl", "--tasks", "synth_mme,synth_textvqa", "--ratio", "0,0.5",
         "--limit", "2", "--model-args", SMALL, "--output", str(tmp_path)],
        cwd=ROOT, env={**ENV, "ACCELERATE_USE_CPU": "1"}, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for label in ("baseline", "dash-0.5"):
        for task in ("synth_mme", "synth_textvqa"):
            name = f"samples_{task}.jsonl"
            assert responses(tmp_path / label / name) == responses(out / label / name)
        stats = (tmp_path / label / "prefill.jsonl").read_text().splitlines()
        assert len(stats) == 4  # both ranks' samples gathered


def test_synth_vqa_scores_each_family_through_the_bridge(tmp_path):
    """The bundled model on the six-family task group: one column per family; each score is the share of exact
    matches in its samples, over the suite's own test rows; and the trained model reads colours through it."""
    from synthvqa import suite as synth

    out = tmp_path / "vqa"
    proc = run(RUN, "--model", "qwen2-vl-synth", "--tasks", "synth_vqa", "--ratio", "0", "--limit", "4",
               "--output", out)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = list(csv.DictReader((out / "comparison.csv").open()))
    assert len(rows) == 1
    for family in synth.FAMILIES:
        samples = [json.loads(line) for line in (out / "baseline" / f"samples_synth_vqa_{family}.jsonl").open()]
        want = synth.vqa_rows("test", 4, family)
        assert [s["doc"]["question"] for s in samples] == [w["question"] for w in want]
        norm = lambda t: t.strip().strip(".").strip().lower()  # noqa: E731
        hits = [norm(s["filtered_resps"][0]) in {norm(a) for a in w["answers"]} for s, w in zip(samples, want)]
        assert float(rows[0][f"synth_vqa_{family} exact_match"]) == pytest.approx(sum(hits) / 4)
    assert float(rows[0]["synth_vqa_colour exact_match"]) >= 0.75  # 99.6% on 500 questions (model card)


def test_qwen3_vl_runs_through_the_qwen_bridge(tmp_path):
    """Qwen3-VL (tiny, random weights) through lmms-eval's qwen2_vl wrapper: its prompts and image handling."""
    proc = run(RUN, "--model", "tiny-random-qwen3-vl", "--tasks", "synth_mme", "--ratio", "0,0.5", "--layer", "1",
               "--limit", "2", "--model-args", SMALL, "--output", tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    table = (tmp_path / "comparison.md").read_text()
    assert "dash-0.5" in table and "baseline" in table


@pytest.mark.parametrize("name", ["tiny-random-llava-next", "tiny-random-llava-onevision"])
def test_tiled_llava_models_run_through_the_llava_bridge(tmp_path, name):
    """LLaVA-NeXT and LLaVA-OneVision (tiny, random weights) through dashvl's LLaVA bridge: their processors tile
    the images."""
    proc = run(RUN, "--model", name, "--tasks", "synth_mme", "--ratio", "0,0.5", "--layer", "1",
               "--limit", "2", "--output", tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    table = (tmp_path / "comparison.md").read_text()
    assert "dash-0.5" in table and "baseline" in table


@pytest.mark.parametrize("name", ["tiny-random-internvl", "tiny-random-gemma3"])
def test_internvl_and_gemma3_run_through_the_chat_bridge(tmp_path, name):
    """InternVL and Gemma 3 (tiny, random weights) through dashvl's chat bridge (the processor's own chat template,
    images per prompt): a baseline and a DASH row, the halting recorded per sample."""
    from dashvl.lmms_eval_plugin import model_id_for

    assert model_id_for(name) == "dashvl_chat"
    proc = run(RUN, "--model", name, "--tasks", "synth_mme", "--ratio", "0,0.5", "--layer", "1",
               "--limit", "2", "--batch-size", "2", "--output", tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for label in ("baseline", "dash-0.5"):
        assert len(responses(tmp_path / label / "samples_synth_mme.jsonl")) == 2
        stats = [json.loads(line) for line in (tmp_path / label / "prefill.jsonl").read_text().splitlines()]
        assert len(stats) == 2 and all(s["visual_tokens"] > 0 and s["batch"] == 2 for s in stats)
        assert all((s["halted"] > 0) == (label == "dash-0.5") for s in stats)
    table = (tmp_path / "comparison.md").read_text()
    assert "dash-0.5" in table and "baseline" in table


def test_the_chat_bridge_prompts_through_the_processor_template():
    """The chat bridge's prompt is the processor's own chat template with one image entry per image (the
    ``<image>`` placeholder of lmms-eval's contexts taken out)."""
    script = textwrap.dedent("""
        import dashvl
        from dashvl.lmms_eval_plugin import DashChat
        m = DashChat(pretrained="tiny-random-gemma3", device="cpu")
        _, proc = dashvl.load_model("tiny-random-gemma3", device="cpu")
        want = proc.apply_chat_template([{"role": "user", "content": [{"type": "image"}, {"type": "image"},
            {"type": "text", "text": "Is it red?"}]}], add_generation_prompt=True)
        assert m._prompt("<image> Is it red?", 2) == want, (m._prompt("<image> Is it red?", 2), want)
        assert want.count("<start_of_image>") == 2
        print("ok")
    """)
    proc = run("-c", script)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-3000:]

