#!/usr/bin/env bash
# One device call for the families of issue 17: the GPU checks of the new families (graph path against the layers
# one by one; several-kind families against the CPU), then prefill and generate at Qwen3-VL-8B and
# LLaVA-OneVision-7B shapes (random bf16 weights at the real configs, SDPA). Each step has its own time limit and
# writes its JSON as it goes, so a cut call keeps what it measured. OUT: the device tool's result folder.
#   bash bench/run_gpu_families.sh          # carry .whl (transformers 5.24)
set -uo pipefail
source "$(dirname "$0")/gpu_setup.sh"
NEW="qwen3_vl or llava_next or llava_onevision or internvl or several_layer_kinds"
DASHVL_GPU_REPORT="$OUT/graph_path_families.json" timeout ${CHECK_TIMEOUT:-100} python3 -m pytest -q \
  -p no:cacheprovider tests/gpu/test_graph_path.py -k "$NEW" 2>&1 | clean | tail -8
for m in qwen3-vl-8b llava-onevision-7b; do
  timeout ${PREFILL_TIMEOUT:-60} python3 -m bench.gpu_prefill --model $m --mode llm --tokens 1088,4160,16448 \
    --layers 2 --ratios 0,0.75 --kv drop,keep --reps 3 --warmup 1 --out "$OUT" 2>&1 | clean | tail -14
done
for m in qwen3-vl-8b llava-onevision-7b; do
  timeout ${GEN_TIMEOUT:-60} python3 -m bench.gpu_generate --model $m --mode llm --cache dynamic --tokens 1088,16448 \
    --batch 1 --new 32 --reps 3 --settings "unmodified;ratio=0;ratio=0.75,layer=2;ratio=0.75,layer=2,kv=keep" \
    --out "$OUT" 2>&1 | clean | tail -14
done
