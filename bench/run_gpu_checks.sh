#!/usr/bin/env bash
# One device call: transformers 5.24 from .whl/, the GPU checks (tests/gpu) with their report, then the
# generate benchmark at the sizes given (default: one quick configuration). OUT is the device tool's folder.
#   bash bench/run_gpu_checks.sh                                  # checks + quick generate
#   GEN="--tokens 1088,16448 --batch 1,8 --new 32,128" bash bench/run_gpu_checks.sh
set -uo pipefail
source "$(dirname "$0")/gpu_setup.sh"
if [ "${CHECKS:-1}" = 1 ]; then
  DASHVL_GPU_REPORT="$OUT/graph_path_vs_layers.json" timeout ${CHECK_TIMEOUT:-300} python3 -m pytest -q -p no:cacheprovider \
    tests/gpu/test_graph_path.py 2>&1 | clean | tail -15
  DASHVL_GPU_REPORT="$OUT/split_and_offload.json" timeout 120 python3 -m pytest -q -p no:cacheprovider \
    tests/gpu/test_split_and_offload.py 2>&1 | clean | tail -8
fi
timeout ${GEN_TIMEOUT:-240} python3 -m bench.gpu_generate --model qwen2-vl-7b --mode llm --cache dynamic \
  ${GEN:---tokens 1088 --batch 1 --new 32 --reps 5} --out "$OUT" 2>&1 | clean
