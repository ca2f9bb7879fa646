"""The bundled models' accuracy reports (synthvqa.reports), at a toy size on the CPU."""
import pytest


def test_accuracy_table_runs(tmp_path):
    from synthvqa.reports.accuracy import main

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


def test_bridge_table_from_eval_runs(tmp_path):
    """accuracy_bridge's table, from the curated comparison rows: one row per configuration of the two runs, families in order, keep rows after
    the drop rows of the same ratio; written between its markers, twice without growing."""
    import csv

    from synthvqa.reports.accuracy_bridge import FAMILIES, curate, section, write_section

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
    text = section(curate(["m"], root=str(tmp_path), layer="1", limit=20, minutes=None))
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
    from synthvqa.reports.halted_cells import main

    out = tmp_path / "ACCURACY.md"
    out.write_text("the tables\n")
    lines = main(["--models", "qwen2-vl-synth", "--per-family", "1", "--ratios", "0.5", "--out", str(out)])
    cells = lines[2].strip("|").split("|")
    shares = [float(c.strip().rstrip("%")) for c in cells[3:]]
    assert [c.strip() for c in cells[:3]] == ["qwen2-vl-synth", "1", "0.5"] and all(0 <= v <= 100 for v in shares)
    assert shares[0] > 0  # at ratio 0.5 some image tokens halt
    text = out.read_text()
    assert text.startswith("the tables\n\n<!-- cells:start -->") and lines[2] in text
    assert text.rstrip().endswith("<!-- cells:end -->")


def test_accuracy_rewrite_keeps_the_notes_and_the_other_scripts_sections():
    from synthvqa.reports.accuracy import assemble

    old = ("# old\n\nheader\n\n<!-- notes:start -->\nby hand\n<!-- notes:end -->\n\n| old table |\n\n"
           "<!-- cells:start -->\ncells\n<!-- cells:end -->\n\n<!-- bridge:start -->\nbridge\n<!-- bridge:end -->\n")
    new = assemble(["# new", "", "header", "", "| new table |"], old)
    assert new == ("# new\n\nheader\n\n<!-- notes:start -->\nby hand\n<!-- notes:end -->\n\n| new table |\n\n"
                   "<!-- cells:start -->\ncells\n<!-- cells:end -->\n\n<!-- bridge:start -->\nbridge\n<!-- bridge:end -->\n")
    assert assemble(["# new", "", "header", "", "| t |"], "") == "# new\n\nheader\n\n| t |\n"



def test_existence_errors_sorts_questions_by_what_the_image_holds():
    from synthvqa.reports.existence_errors import KINDS, kind_of, main

    drawn = [("red", "circle"), ("blue", "square")]
    assert kind_of(drawn, "Is there a red circle in the image?", "Yes") == "Yes"
    assert kind_of(drawn, "Is there a red square in the image?", "No") == "No, both drawn"
    assert kind_of(drawn, "Is there a red star in the image?", "No") == "No, colour drawn"
    assert kind_of(drawn, "Is there a green circle in the image?", "No") == "No, shape drawn"
    lines = main(["--model", "llava-synth", "--n", "6"])
    rows = {line.split("|")[1].strip(): [int(x) for x in line.split("|")[2:4]] for line in lines[4:]}
    assert set(rows) == {*KINDS, "all"} and rows["all"][1] == 6 and rows["Yes"][1] == 3
    assert sum(rows[k][1] for k in KINDS) == 6 and all(ok <= n for ok, n in rows.values())


def test_vl_table_keeps_equal_visual_budgets(tmp_path):
    """Every LLM-halting row with scope vision keeps the same number of visual tokens (the budget), which the table
    states from the trace; the vision-tower-only row keeps them all."""
    from synthvqa.reports import vl_table

    out = tmp_path / "vl.md"
    vl_table.main(["--models", "qwen2-vl-synth", "--per-family", "1", "--reductions", "0.778", "--layers", "2",
                   "--out", str(out)])
    rows = [line.split(" | ") for line in out.read_text().splitlines() if line.startswith("| 77.8%")]
    kept = {r[1]: float(r[2]) for r in rows}
    assert len(rows) == len(vl_table.rows_for(0.778, [2], 1))
    equal = [k for k in kept if k not in ("downsample", "vision tower only, v=1", "dash drop, scope all, l=2")]
    assert len({kept[k] for k in equal}) == 1 and kept[equal[0]] > 0
    full = float([line for line in out.read_text().splitlines() if "| unmodified |" in line][0].split(" | ")[2])
    assert kept["vision tower only, v=1"] == full and kept[equal[0]] < 0.3 * full


def test_vl_table_rows_picks_rows_by_label(tmp_path):
    from synthvqa.reports import vl_table

    out = tmp_path / "vl.md"
    vl_table.main(["--models", "qwen2-vl-synth", "--per-family", "1", "--reductions", "0.778", "--layers", "2",
                   "--rows", "dash-q|fastv", "--out", str(out)])
    labels = [line.split(" | ")[1] for line in out.read_text().splitlines() if line.startswith("| ")][1:]
    assert labels == ["unmodified", "fastv, l=2", "dash-q, l=2"], labels
    with pytest.raises(SystemExit):
        vl_table.main(["--rows", "(", "--out", str(out)])
