#!/usr/bin/env bash
# generate()'s decode steps on the H200, one device call (about 8 minutes): transformers 5.24 from .whl/, then
#   kernels: the GPU check of which attention kernels a decode step runs (tests/gpu/test_decode_kernels.py)
#   pairs:   one decode step with and without dashvl, alternated step by step (bench/decode_pairs.py), Qwen2-VL-7B
#            shapes, 1k and 16k text prompts, batch 1 and 8 (the paired measure the 2% target needs)
#   image:   whole answers for one image through the real tower (1,024 visual tokens, 64 new), dynamic and static
#   static8: the static cache at batch 8 (1k text)
# STEPS picks (default "kernels pairs image static8"); OUT: the device's folder.
set -uo pipefail
source "$(dirname "$0")/gpu_setup.sh"
for step in ${STEPS:-kernels pairs image static8}; do
  case $step in
  kernels)
    DASHVL_GPU_REPORT="$OUT/decode_kernels.json" timeout 120 python3 -m pytest -q -p no:cacheprovider \
      tests/gpu/test_decode_kernels.py 2>&1 | clean | tail -6 ;;
  pairs)
    timeout ${PAIRS_TIMEOUT:-330} python3 -m bench.decode_pairs --model qwen2-vl-7b --tokens ${TOKENS:-1088,16448} \
      --batch ${BATCH:-1,8} --steps ${PAIR_STEPS:-40} --warmup 3 \
      --settings "unmodified;unmodified;ratio=0;ratio=0.75,layer=2;ratio=0.75,layer=2,kv=keep;ratio=0.75,layer=2,cuda_graph=False" \
      --tag ${TAG:-_fixed} --out "$OUT" 2>&1 | clean | grep -v "paired decode steps" ;;
  image)
    timeout ${IMAGE_TIMEOUT:-200} python3 -m bench.gpu_generate --model qwen2-vl-7b --mode e2e --tokens 1024 --batch 1 \
      --new 64 --cache dynamic,static --settings "unmodified;ratio=0;ratio=0.75,layer=2;ratio=0.75,layer=2,kv=keep" \
      --reps 3 --tag _image64 --out "$OUT" 2>&1 | clean ;;
  static8)
    timeout ${STATIC8_TIMEOUT:-150} python3 -m bench.gpu_generate --model qwen2-vl-7b --mode llm --tokens 1088 --batch 8 \
      --new 32 --cache static --settings "unmodified;ratio=0;ratio=0.75,layer=2" --reps 3 --tag _static_b8 \
      --out "$OUT" 2>&1 | clean ;;
  esac
done
