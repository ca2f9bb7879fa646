#!/usr/bin/env bash
# kv="keep" without a mask on the H200 (issue 16), in one device call: the real-kernel checks
# (tests/gpu/test_keep_kernels.py: torch's flash varlen kernel against the definition, fast keep against SDPA's
# masked keep on 6-layer models) and the prefill benchmark (bench/gpu_keep.py) at Qwen2-VL-7B and LLaVA-1.5-7B
# shapes. FlashAttention 4: bash bench/run_gpu_flash4.sh with STEPS=keep.
#   MODELS (default "qwen2-vl-7b llava-1.5-7b"), TOKENS (default 1088,4160,16448), CHECKS=0 (skip the checks),
#   CHUNKS, RATIOS, PROFILE (lengths to profile), TAG (results file suffix)
set -uo pipefail
source "$(dirname "$0")/gpu_setup.sh"
[ "${CHECKS:-1}" = 1 ] && DASHVL_GPU_REPORT="$OUT/keep_kernels.json" timeout ${CHECK_TIMEOUT:-200} python3 -m pytest \
  -q -p no:cacheprovider tests/gpu/test_keep_kernels.py 2>&1 | clean | tail -15
for model in ${MODELS:-qwen2-vl-7b llava-1.5-7b}; do
  timeout ${BENCH_TIMEOUT:-200} python3 -m bench.gpu_keep --model $model --attn sdpa --tokens ${TOKENS:-1088,4160,16448} \
    --reps ${REPS:-5} --warmup 2 --chunks ${CHUNKS:-128,256} --ratios ${RATIOS:-0.5,0.75} \
    ${PROFILE:+--profile $PROFILE} ${TAG:+--tag $TAG} --out "$OUT" 2>&1 | clean | grep -v "^{'device'"
done
