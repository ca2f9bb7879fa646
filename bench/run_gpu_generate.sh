#!/usr/bin/env bash
# Whole generate() answers after the decode-step fix, on the H200, in two device calls of about 8 minutes each
# (transformers 5.24 from .whl/); dynamic cache (the static cache's compiled step is transformers' own and was not
# touched by the fix: bench/RESULTS.md has its rows). Every run times "unmodified" twice: the second row is the
# unmodified model against itself, the noise floor of whole-answer ratios in that run.
#   PART=text   bash bench/run_gpu_generate.sh   Qwen2-VL-7B LM, 1k / 4k / 16k text, batch 1 and 8, 33 and 128 new
#   PART=images bash bench/run_gpu_generate.sh   Qwen2-VL-7B through its real tower (576 / 1,024 / 4,096 visual
#                                                tokens, 64 and 128 new), LLaVA-1.5-7B one and four images, batch 1
#                                                and 8 (32 and 128 new)
# Writes $OUT/generate_*_after_fix*.json; REPS (default 2) rounds after one warm-up.
set -uo pipefail
source "$(dirname "$0")/gpu_setup.sh"
S="unmodified;ratio=0;ratio=0.75,layer=2;ratio=0.75,layer=2,kv=keep;unmodified"
R=${REPS:-2}
case ${PART:-text} in
text)
  timeout 500 python3 -m bench.gpu_generate --model qwen2-vl-7b --mode llm --tokens 1088,4160,16448 --batch 1,8 \
    --new 33,128 --cache dynamic --settings "$S" --reps "$R" --tag _after_fix --out "$OUT" 2>&1 | clean ;;
images)
  timeout 250 python3 -m bench.gpu_generate --model qwen2-vl-7b --mode e2e --tokens 576,1024,4096 --batch 1 \
    --new 64,128 --cache dynamic --settings "$S" --reps "$R" --tag _after_fix --out "$OUT" 2>&1 | clean
  timeout 280 python3 -m bench.gpu_generate --model llava-1.5-7b --mode e2e --tokens 576,2304 --batch 1,8 \
    --new 32,128 --cache dynamic --settings "$S" --reps "$R" --tag _after_fix --out "$OUT" 2>&1 | clean ;;
esac
