#!/usr/bin/env bash
# After the decode fixes (halted layers' decode steps without SDPA's cuDNN kernel; a graph prefill's cache without
# filler slots): the GPU check of the step's kernels, then the paired decode benchmark. One device call (~4 min).
set -uo pipefail
source "$(dirname "$0")/gpu_setup.sh"
DASHVL_GPU_REPORT="$OUT/decode_kernels.json" timeout 120 python3 -m pytest -q -p no:cacheprovider \
  tests/gpu/test_decode_kernels.py 2>&1 | clean | tail -6
timeout ${PAIRS_TIMEOUT:-330} python3 -m bench.decode_pairs --model qwen2-vl-7b --tokens ${TOKENS:-1088,16448} \
  --batch ${BATCH:-1,8} --steps ${PAIR_STEPS:-40} --warmup 3 \
  --settings "unmodified;unmodified;ratio=0;ratio=0.75,layer=2;ratio=0.75,layer=2,kv=keep;ratio=0.75,layer=2,cuda_graph=False" \
  --tag _fixed --out "$OUT" 2>&1 | clean | grep -v "paired decode steps"
