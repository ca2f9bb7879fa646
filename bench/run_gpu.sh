#!/usr/bin/env bash
# Every GPU measurement in bench/RESULTS.md, in one device call (about 6 minutes on one H200).
# Needs transformers 5.24 there: the device tool's call carries it as a wheel in .whl/ (see RESULTS.md).
set -euo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp}
B="python3 -m bench.gpu_prefill --reps 7 --warmup 2"
$B --model qwen2-vl-7b --mode e2e --tokens 1024,4096,16384 --layers 2 --ratios 0,0.5,0.75,0.9 --kv drop 2>&1 | grep -v '^\[transformers\]' | tee "$OUT/qwen_e2e.log"
$B --model qwen2-vl-7b --mode e2e --tokens 4096 --layers 2,0.4 --ratios 0.75 --kv keep --tag _keep 2>&1 | grep -v '^\[transformers\]' | tee "$OUT/qwen_e2e_keep.log"
$B --model llava-1.5-7b --mode e2e --tokens 576,2304 --layers 2 --ratios 0,0.5,0.75,0.9 --kv drop,keep 2>&1 | grep -v '^\[transformers\]' | tee "$OUT/llava_e2e.log"
$B --model qwen2-vl-7b --mode llm --tokens 1088,4160 --layers 2 --ratios 0.75 --kv drop --methods dash,random,fastv --tag _methods 2>&1 | grep -v '^\[transformers\]' | tee "$OUT/qwen_methods.log"
