"""The GPU benchmark's code paths, run on the CPU at a toy size (the numbers mean nothing here)."""
import json

import pytest


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
