"""CPU generate benchmark: a mid-size random Qwen2-VL (8 layers, hidden 512), a 1k-token text prompt, 2 threads.

    python -m bench.cpu_generate            # or: make bench-cpu

Same code as gpu_generate.py with CPU defaults (float32, dynamic cache): where CI runs, the decode overhead of
a compressed model (ratio 0 and DASH) against the unmodified one, per step and for the whole answer.
"""
from bench.gpu_generate import main

if __name__ == "__main__":
    main(model="qwen2-vl-mid", device="cpu", threads=2, tokens="1024", batch="1", new="32", cache="dynamic",
         settings="unmodified;ratio=0;ratio=0.75,layer=2;ratio=0.75,layer=2,kv=keep", reps=7, warmup=1, out="/tmp")
