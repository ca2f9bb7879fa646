"""CPU prefill benchmark: a mid-size random Qwen2-VL (8 layers, hidden 512), ~1.5k tokens, 2 threads.

    python bench/cpu_prefill.py            # or: make bench-cpu

Same code as gpu_prefill.py with CPU defaults (float32). Results go to bench/RESULTS.md by hand.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
from gpu_prefill import main  # noqa: E402

if __name__ == "__main__":
    main(model="qwen2-vl-mid", device="cpu", threads=2, tokens="1536", reps=15, warmup=3, out="/tmp")
