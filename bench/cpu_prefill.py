"""CPU prefill benchmark: a mid-size random Qwen2-VL (8 layers, hidden 512), ~1.5k tokens, 2 threads.

    python -m bench.cpu_prefill            # or: make bench-cpu

Same code as gpu_prefill.py with CPU defaults (float32). Results go to bench/RESULTS.md by hand.
"""
from bench.gpu_prefill import main

if __name__ == "__main__":
    main(model="qwen2-vl-mid", device="cpu", threads=2, tokens="1536", reps=15, warmup=3, out="/tmp")
