#!/usr/bin/env bash
# The static cache on the H200, one device call (about 9 minutes): transformers 5.24 from .whl/, the GPU check
# of compiled static generation (tests/gpu/test_static_cache.py), then the generate benchmark at Qwen2-VL-7B's
# shapes with the dynamic and the static cache (whose decode step generate() compiles). OUT: the device's folder.
#   bash bench/run_gpu_static.sh
set -uo pipefail
source "$(dirname "$0")/gpu_setup.sh"
if [ "${CHECKS:-1}" = 1 ]; then
  DASHVL_GPU_REPORT="$OUT/static_cache.json" timeout ${CHECK_TIMEOUT:-240} python3 -m pytest -q -p no:cacheprovider \
    tests/gpu/test_static_cache.py 2>&1 | clean | tail -15
fi
timeout ${GEN_TIMEOUT:-480} python3 -m bench.gpu_generate --model qwen2-vl-7b --mode llm --cache dynamic,static \
  --settings "unmodified;ratio=0;ratio=0.75,layer=2;ratio=0.75,layer=2,kv=keep" \
  ${GEN:---tokens 1088,16448 --batch 1 --new 32,128 --reps 3} --tag _static --out "$OUT" 2>&1 | clean
