#!/usr/bin/env bash
# Session 3 (issue 6): the whole grid issue 6 names — both models' LLM prefill, unmodified and DASH drop / keep
# at ratio 0 / 0.5 / 0.75 / 0.9 × layer 2 and 0.4·L, SDPA and eager, at three lengths each — and the
# CUDA-graph correctness check, in device calls of about 6 minutes on one H200 (transformers 5.24 in .whl/):
#   bash bench/run_gpu_matrix.sh 1   # the grid (before kv="keep" took the graph path; Qwen eager 16k timed out)
#   bash bench/run_gpu_matrix.sh 2   # after: the graph check in both kv modes, the grid again with SDPA,
#                                    # and Qwen2-VL eager at 16k alone
# Each command has its own timeout so that one slow part cannot take the others' results with it.
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp}
clean() { grep -v '^\[transformers\]'; }
GRID="--layers 2,0.4 --ratios 0,0.5,0.75,0.9 --kv drop,keep --reps 5 --warmup 2"
DASHVL_GPU_REPORT="$OUT/graph_path_vs_layers.json" timeout 90 python3 -m pytest -q tests/gpu/test_graph_path.py 2>&1 | clean > "$OUT/gpu_graph_check.log"
if [ "${1:-1}" = 1 ]; then
for attn in sdpa eager; do
  timeout 150 python3 -m bench.gpu_prefill --model qwen2-vl-7b --mode llm --attn $attn --tokens 1088,4160,16448 \
     $GRID --tag _matrix 2>&1 | clean > "$OUT/qwen_llm_${attn}_matrix.log"
  # LLaVA-1.5: one image (576 + prompt), four and seven images (its context is 4,096 tokens)
  timeout 100 python3 -m bench.gpu_prefill --model llava-1.5-7b --mode llm --attn $attn --tokens 602,2336,4064 \
     $GRID --tag _matrix 2>&1 | clean > "$OUT/llava_llm_${attn}_matrix.log"
done
else
timeout 130 python3 -m bench.gpu_prefill --model qwen2-vl-7b --mode llm --tokens 1088,4160,16448 $GRID \
   --tag _matrix2 2>&1 | clean > "$OUT/qwen_llm_sdpa_matrix2.log"
timeout 80 python3 -m bench.gpu_prefill --model llava-1.5-7b --mode llm --tokens 602,2336,4064 $GRID \
   --tag _matrix2 2>&1 | clean > "$OUT/llava_llm_sdpa_matrix2.log"
timeout 150 python3 -m bench.gpu_prefill --model qwen2-vl-7b --mode llm --attn eager --tokens 16448 $GRID \
   --reps 3 --warmup 1 --tag _matrix2_16k 2>&1 | clean > "$OUT/qwen_llm_eager_16k.log"
fi
