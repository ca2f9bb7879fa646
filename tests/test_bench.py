"""The GPU benchmark's code paths, run on the CPU at a toy size (the numbers mean nothing here)."""
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("model,mode", [("qwen2-vl-mid", "e2e"), ("llava-mid", "llm")])
def test_prefill_benchmark_runs_on_cpu(tmp_path, model, mode):
    from bench.gpu_prefill import main

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


def test_generate_benchmark_runs_on_cpu(tmp_path):
    from bench.gpu_generate import main, parse_settings

    with pytest.raises(ValueError, match="ratio must be a number in"):
        parse_settings("unmodified;ratio=1.5")
    results = main(["--model", "qwen2-vl-mid", "--device", "cpu", "--tokens", "64", "--batch", "1,2", "--new", "3",
                    "--cache", "dynamic", "--settings", "unmodified;ratio=0;ratio=0.5,layer=2,kv=keep", "--reps", "1",
                    "--warmup", "0", "--out", str(tmp_path)])
    assert [(r["tokens"], r["batch"]) for r in results] == [(64, 1), (64, 2)]
    for entry in results:
        base, zero, keep = entry["rows"]
        assert base["setting"] == "unmodified" and keep["setting"] == "ratio=0.5,layer=2,kv=keep"
        for row in (base, zero, keep):
            assert row["ttft"] > 0 and row["whole_3"] > 0 and row["per_token"] == (row["whole_3"] - row["ttft"]) / 2
        assert keep["ttft_speedup"] == base["ttft"] / keep["ttft"]
        assert base["cache_mb"] > 0 and keep["cache_mb"] == zero["cache_mb"] == base["cache_mb"]  # keep: every key
    (saved,) = tmp_path.glob("generate_qwen2-vl-mid_llm_cpu_sdpa.json")
    assert json.loads(saved.read_text())["results"] == json.loads(json.dumps(results))


def test_the_generate_plot_draws_every_recorded_prompt(tmp_path):
    from bench import plot_generate
    files = [str(ROOT / "bench/results/generate_llava-1.5-7b_e2e_cuda_sdpa_images.json"),
             str(ROOT / "bench/results/generate_qwen2-vl-7b_llm_cuda_sdpa_4k.json")]
    titles = [t for t, _ in plot_generate.panels(files)]
    assert titles == ["llava-1.5-7b, 602 tokens, batch 1, dynamic", "llava-1.5-7b, 2336 tokens, batch 1, dynamic",
                      "qwen2-vl-7b, 4160 tokens, batch 1, dynamic"]
    plot_generate.main(files + ["--out", str(tmp_path / "g.png")])
    assert (tmp_path / "g.png").stat().st_size > 20_000


def test_paired_decode_twins_share_the_weights_and_decode_as_generate(tmp_path):
    """bench.decode_pairs: a twin is the same weights under its own hooks, and its step loop is generate()'s."""
    import torch

    import dashvl
    from bench.common import build_model
    from bench.decode_pairs import Decoder, main, twin
    from bench.gpu_generate import make_inputs

    model = build_model("qwen2-vl-tiny", "cpu", torch.float32)
    model.generation_config.eos_token_id = None  # random weights: never stop early
    copy = twin(model)
    assert all(a is b for a, b in zip(model.parameters(), copy.parameters()))
    inputs = make_inputs(model, "llm", 40, 2, "cpu")
    with dashvl.compress(model, dashvl.DashConfig(ratio=0.5, layer=2)), torch.no_grad():  # what Decoder installs
        want = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    decoder = Decoder(copy, inputs, dict(ratio=0.5, layer=2))
    with torch.no_grad():
        decoder.prefill()
        for _ in range(3):
            decoder.step()
    assert torch.equal(decoder.ids, want)
    assert dashvl.get_handle(model) is None and dashvl.get_handle(copy) is decoder.handle  # hooks stay on the twin
    results = main(["--model", "qwen2-vl-tiny", "--device", "cpu", "--tokens", "32", "--batch", "1", "--steps", "3",
                    "--warmup", "1", "--settings", "unmodified;ratio=0.5,layer=2", "--out", str(tmp_path)])
    base, dash = results[0]["rows"]
    assert base["speedup"] == 1.0 and dash["steps"] == 3 and len(dash["series_ms"]) == 3
