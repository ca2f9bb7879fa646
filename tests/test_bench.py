"""The GPU benchmark's code paths, run on the CPU at a toy size (the numbers mean nothing here)."""
import json
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "bench"))


@pytest.mark.parametrize("model,mode", [("qwen2-vl-mid", "e2e"), ("llava-mid", "llm")])
def test_prefill_benchmark_runs_on_cpu(tmp_path, model, mode):
    from gpu_prefill import main

    tokens = "64" if mode == "e2e" else "128"
    vision = ["--vision-ratios", "0.5", "--vision-layer", "0", "--downsample", "0.5"] if mode == "e2e" else []
    main(["--model", model, "--mode", mode, "--device", "cpu", "--tokens", tokens, "--ratios", "0,0.5",
          "--layers", "2,0.4", "--kv", "drop", "--methods", "dash,fastv", "--reps", "1", "--warmup", "0",
          "--out", str(tmp_path), "--tag", "_smoke"] + vision)
    (result,) = tmp_path.glob("*_smoke.json")
    data = json.loads(result.read_text())
    entry = data["results"][0]
    assert entry["checks"]["ratio0_bitwise"] is True
    rows = entry["rows"] if mode == "llm" else [r for r in entry["e2e_rows"] if "downsample" not in r["setting"]]
    # unmodified + ratio 0 at 2 layers + 0.5 x 2 layers x 2 methods (+ vision alone, vision + LLM)
    assert len(rows) == 1 + 2 + 4 + (2 if mode == "e2e" else 0)
    assert rows[0]["setting"] == "unmodified" and rows[0]["limit"] == 1.0
    assert all(r["limit"] > 1 for r in rows if "ratio=0.5" in r["setting"])
    if mode == "llm":
        assert entry["select_ms"] > 0
    else:
        assert entry["vision_ms"] > 0 and len(entry["llm_rows"]) == len(entry["vision_rows"]) == len(rows)
        vision_rows = [r for r in entry["vision_rows"] if "vision_ratio=0.5" in r["setting"]]
        assert len(vision_rows) == 2 and all(r["limit"] > 1 for r in vision_rows)
        (down,) = [r for r in entry["e2e_rows"] if r["setting"].startswith("downsample=0.5")]
        assert down["ms"] > 0 and down["speedup"] > 0


def test_accuracy_table_runs(tmp_path):
    from accuracy import main

    out, pic = tmp_path / "ACCURACY.md", tmp_path / "example.png"
    out.write_text("old table\n<!-- notes:start -->\nnotes\n<!-- notes:end -->\nold rows\n"
                   "<!-- bridge:start -->\nthe bridge's section\n<!-- bridge:end -->\n")
    main(["--models", "qwen2-vl-synth", "--per-family", "1", "--ratios", "0.5", "--out", str(out),
          "--picture", str(pic)])
    text = out.read_text()
    assert "old table" not in text and "old rows" not in text
    assert text.endswith("\n<!-- bridge:start -->\nthe bridge's section\n<!-- bridge:end -->\n")
    assert text.index("<!-- notes:start -->\nnotes\n<!-- notes:end -->") < text.index("| setting |")
    for label in ("unmodified", "dash drop 0.5", "dash keep 0.5", "random drop 0.5"):
        assert f"| {label} |" in text
    assert "| setting | existence | colour | shape | count | position | reading | mean |" in text
    assert pic.stat().st_size > 1000


def test_gpu_graph_check_runs_on_cpu_in_emulation(tmp_path):
    from gpu_graph_check import main

    from dashvl import graphs

    # exits 1 on any mismatch; the other backbones' graph paths are held to the reference in test_graphs.py
    main(["--device", "cpu", "--emulate", "--out", str(tmp_path), "--families", "qwen2_vl,llava,llama"])
    assert graphs.EMULATE is False  # restored for the tests that follow
    data = json.loads((tmp_path / "gpu_graph_check.json").read_text())
    assert data["emulate"] and all(r["ok"] for r in data["results"].values())
    assert data["results"]["llama batch 3 drop"]["replays"] >= 1
    assert data["results"]["llama batch 3 keep"]["replays"] >= 1


def test_bridge_table_from_eval_runs(tmp_path):
    """accuracy_bridge's table: one row per configuration of the two runs, families in order, keep rows after
    the drop rows of the same ratio; written between its markers, twice without growing."""
    import csv

    from accuracy_bridge import FAMILIES, section, write_section

    def fake(folder, rows):
        folder.mkdir(parents=True)
        cols = ["config", "method", "ratio", "synth_vqa exact_match"] + \
            [f"synth_vqa_{f} exact_match" for f in FAMILIES] + ["prompt tokens", "tokens halted"]
        with open(folder / "comparison.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(cols)
            w.writerows(rows)

    fam = [0.5, 1.0, 0.25, 0.75, 0.5, 0.0]
    fake(tmp_path / "m", [["baseline", "-", "0", "0.5"] + fam + ["100", "0"],
                          ["dash-0.5", "dash", "0.5", "0.25"] + [x / 2 for x in fam] + ["100", "50"]])
    fake(tmp_path / "m-keep", [["dash-0.5", "dash", "0.5", "0.4"] + fam + ["100", "50"]])
    text = section(["m"], "1", 20, None, root=str(tmp_path))
    lines = [line for line in text.splitlines() if line.startswith("| ")]
    assert lines[1:] == ["| unmodified | 50.0 | 100.0 | 25.0 | 75.0 | 50.0 | 0.0 | 50.0 | 0% |",
                         "| dash drop 0.5 | 25.0 | 50.0 | 12.5 | 37.5 | 25.0 | 0.0 | 25.0 | 50% |",
                         "| dash keep 0.5 | 50.0 | 100.0 | 25.0 | 75.0 | 50.0 | 0.0 | 40.0 | 50% |"]
    out = tmp_path / "ACCURACY.md"
    out.write_text("the table\n")
    write_section(str(out), text)
    write_section(str(out), text)
    assert out.read_text() == "the table\n\n" + text + "\n"


def test_halted_cells_counts_what_dash_halts(tmp_path):
    from halted_cells import main

    out = tmp_path / "ACCURACY.md"
    out.write_text("the tables\n")
    lines = main(["--models", "qwen2-vl-synth", "--per-family", "1", "--ratios", "0.5", "--out", str(out)])
    cells = lines[2].strip("|").split("|")
    shares = [float(c.strip().rstrip("%")) for c in cells[2:]]
    assert cells[0].strip() == "qwen2-vl-synth" and all(0 <= v <= 100 for v in shares)
    assert shares[0] > 0  # at ratio 0.5 some image tokens halt
    text = out.read_text()
    assert text.startswith("the tables\n\n<!-- cells:start -->") and lines[2] in text
    assert text.rstrip().endswith("<!-- cells:end -->")


def test_accuracy_rewrite_keeps_the_notes_and_the_other_scripts_sections():
    from accuracy import assemble

    old = ("# old\n\nheader\n\n<!-- notes:start -->\nby hand\n<!-- notes:end -->\n\n| old table |\n\n"
           "<!-- cells:start -->\ncells\n<!-- cells:end -->\n\n<!-- bridge:start -->\nbridge\n<!-- bridge:end -->\n")
    new = assemble(["# new", "", "header", "", "| new table |"], old)
    assert new == ("# new\n\nheader\n\n<!-- notes:start -->\nby hand\n<!-- notes:end -->\n\n| new table |\n\n"
                   "<!-- cells:start -->\ncells\n<!-- cells:end -->\n\n<!-- bridge:start -->\nbridge\n<!-- bridge:end -->\n")
    assert assemble(["# new", "", "header", "", "| t |"], "") == "# new\n\nheader\n\n| t |\n"



def test_gpu_split_check_runs_on_cpu_in_emulation(tmp_path):
    from gpu_split_check import main, split_map

    from dashvl import graphs
    from helpers import build

    model, _ = build("llama")
    dm = split_map(model, ["a", "b"])
    assert dm["model.layers.1.self_attn.q_proj"] == "a" and dm["model.layers.2.mlp.up_proj"] == "b"
    assert dm["model.embed_tokens"] == "a" and dm["lm_head"] == "a" and set(dm.values()) == {"a", "b"}
    main(["--devices", "cpu,cpu", "--emulate", "--families", "llama", "--out", str(tmp_path)])  # exits 1 on a mismatch
    assert graphs.EMULATE is False
    data = json.loads((tmp_path / "gpu_split_check.json").read_text())
    assert data["results"]["split llama batch 3"]["ok"]


def test_existence_errors_sorts_questions_by_what_the_image_holds():
    from existence_errors import KINDS, kind_of, main

    drawn = [("red", "circle"), ("blue", "square")]
    assert kind_of(drawn, "Is there a red circle in the image?", "Yes") == "Yes"
    assert kind_of(drawn, "Is there a red square in the image?", "No") == "No, both drawn"
    assert kind_of(drawn, "Is there a red star in the image?", "No") == "No, colour drawn"
    assert kind_of(drawn, "Is there a green circle in the image?", "No") == "No, shape drawn"
    lines = main(["--model", "llava-synth", "--n", "6"])
    rows = {line.split("|")[1].strip(): [int(x) for x in line.split("|")[2:4]] for line in lines[4:]}
    assert set(rows) == {*KINDS, "all"} and rows["all"][1] == 6 and rows["Yes"][1] == 3
    assert sum(rows[k][1] for k in KINDS) == 6 and all(ok <= n for ok, n in rows.values())
