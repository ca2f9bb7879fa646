#!/usr/bin/env bash
# The static cache on the GPU machine (H100 or H200), one device call (about 9 minutes): transformers 5.24 from .whl/, the GPU check
# of compiled static generation (tests/gpu/test_static_cache.py), then the generate benchmark at Qwen2-VL-7B's
# shapes with the dynamic and the static cache (whose decode step generate() compiles). OUT: the device's folder.
#   bash bench/run_gpu_static.sh
#   CHECKS=1 CACHE=static TAG=_compact SETTINGS="unmodified;ratio=0.75,layer=2;ratio=0.75,layer=2,kv=keep;unmodified" \
#     GEN="--tokens 16448 --batch 1 --new 32,128 --reps 3|--tokens 16448 --batch 8 --new 32 --reps 2" bash bench/run_gpu_static.sh
# A run's own --model / --mode come after the script's and win, so one GEN can mix shapes (the rest of the grid on
# the static cache, measured in two such calls: bench/RESULTS.md, first section):
#   CHECKS=0 CACHE=static TAG=_grid GEN="--model llava-1.5-7b --mode e2e --tokens 576,2304 --batch 1 --new 32 --reps 3|\
#     --tokens 4160 --batch 1 --new 32 --reps 3|--mode e2e --tokens 576,4096 --batch 1 --new 64 --reps 3|\
#     --tokens 1088 --batch 8 --new 32 --reps 3" bash bench/run_gpu_static.sh
set -uo pipefail
source "$(dirname "$0")/gpu_setup.sh"
if [ "${CHECKS:-1}" = 1 ]; then
  DASHVL_GPU_REPORT="$OUT/static_cache.json" timeout ${CHECK_TIMEOUT:-240} python3 -m pytest -q -p no:cacheprovider \
    tests/gpu/test_static_cache.py 2>&1 | clean | tail -15
fi
# GEN: one or more '|'-separated argument sets, each one gpu_generate run (CACHE and SETTINGS apply to all)
IFS='|' read -ra RUNS <<< "${GEN:---tokens 1088,16448 --batch 1 --new 32,128 --reps 3}"
for i in "${!RUNS[@]}"; do
  run=${RUNS[$i]}; tag=${TAG:-_static}; [ ${#RUNS[@]} -gt 1 ] && tag=${tag}_$((i + 1))  # one results file per run
  timeout ${GEN_TIMEOUT:-480} python3 -m bench.gpu_generate --model qwen2-vl-7b --mode llm --cache ${CACHE:-dynamic,static} \
    --settings "${SETTINGS:-unmodified;ratio=0;ratio=0.75,layer=2;ratio=0.75,layer=2,kv=keep}" \
    $run --tag $tag --out "$OUT" 2>&1 | clean
done
