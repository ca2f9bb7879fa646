#!/usr/bin/env bash
# Session 2's GPU measurements (issues 6, 8, 9), in two device calls of about 4 minutes each on one H200
# (a call may run 10 minutes at most); transformers 5.24 comes as a wheel in .whl/ (see RESULTS.md).
#   bash bench/run_gpu_graphs.sh 1   # graph vs layers one by one (cuda_graph=False) at short and long prompts,
#                                    # LLaVA-1.5 end to end, Qwen2-VL's vision tower at 576 / 1k visual tokens,
#                                    # LLaVA with eager attention, a per-layer profile
#   bash bench/run_gpu_graphs.sh 2   # the default path at every ratio and length, ratio 0 with 40 repetitions
#   bash bench/run_gpu_graphs.sh 3   # ratio 0 at one image's length again (60 repetitions) after ratio 0 stopped
#                                    # launching work for the trace, and the launches it adds (profiler)
#   bash bench/run_gpu_graphs.sh 4   # where 4k at ρ=0.9 loses to its FLOPs limit (profile), LLaVA at layer
#                                    # 0.4·L with drop and keep, LLaVA's CLIP tower with vision halting
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp}
B="timeout 170 python3 -m bench.gpu_prefill --reps 7 --warmup 2"
clean() { grep -v '^\[transformers\]'; }
if [ "${1:-1}" = 1 ]; then
$B --model qwen2-vl-7b --mode llm --tokens 576,1088,2112,4160,16448 --layers 2 --ratios 0,0.5,0.75,0.9 --kv drop \
   --graph auto,off --tag _graphs 2>&1 | clean > "$OUT/qwen_llm_graphs.log"
$B --model llava-1.5-7b --mode e2e --tokens 576,2304 --layers 2 --ratios 0,0.5,0.75,0.9 --kv drop \
   --graph auto,off --tag _graphs 2>&1 | clean > "$OUT/llava_e2e_graphs.log"
$B --model qwen2-vl-7b --mode e2e --tokens 576,1024 --layers 2 --ratios 0,0.75 --kv drop --graph auto,off \
   --vision-ratios 0.75 --vision-layer 8 --tag _vision_short 2>&1 | clean > "$OUT/qwen_e2e_vision_short.log"
timeout 100 python3 -m bench.profile_prefill --model qwen2-vl-7b --tokens 1088 --reps 7 --out "$OUT" 2>&1 | clean \
   > "$OUT/profile.log"
$B --model llava-1.5-7b --mode llm --attn eager --tokens 2336 --layers 2 --ratios 0,0.5,0.75,0.9 --kv drop \
   --graph auto,off --tag _eager 2>&1 | clean > "$OUT/llava_llm_eager.log"
elif [ "$1" = 2 ]; then
$B --model qwen2-vl-7b --mode llm --tokens 576,1088,2112,4160,16448 --layers 2 --ratios 0.25,0.5,0.75,0.9 \
   --kv drop --reps 9 --tag _default 2>&1 | clean > "$OUT/qwen_llm_default.log"
$B --model qwen2-vl-7b --mode llm --tokens 576,1088,4160,16448 --layers 2 --ratios 0 --kv drop --reps 40 \
   --warmup 3 --tag _ratio0 2>&1 | clean > "$OUT/qwen_llm_ratio0.log"
$B --model llava-1.5-7b --mode e2e --tokens 576 --layers 2 --ratios 0,0.25 --kv drop --reps 15 --tag _short \
   2>&1 | clean > "$OUT/llava_e2e_short.log"
elif [ "$1" = 3 ]; then
$B --model qwen2-vl-7b --mode llm --tokens 576,1088 --layers 2 --ratios 0 --kv drop --reps 60 --warmup 3 \
   --tag _ratio0_lazy 2>&1 | clean > "$OUT/qwen_llm_ratio0_lazy.log"
$B --model llava-1.5-7b --mode e2e --tokens 576 --layers 2 --ratios 0 --kv drop --reps 30 --warmup 3 \
   --tag _ratio0_lazy 2>&1 | clean > "$OUT/llava_e2e_ratio0_lazy.log"
timeout 100 python3 -m bench.profile_prefill --model qwen2-vl-7b --tokens 576 --ratio 0 --reps 10 --out "$OUT" 2>&1 \
   | clean > "$OUT/profile_ratio0.log"
else
timeout 80 python3 -m bench.profile_prefill --model qwen2-vl-7b --tokens 4160 --ratio 0.9 --reps 7 --out "$OUT" 2>&1 \
   | clean > "$OUT/profile_4160_0.9.log"
timeout 100 python3 -m bench.gpu_prefill --reps 5 --warmup 2 --model llava-1.5-7b --mode llm --tokens 2336 \
   --layers 0.4 --ratios 0.5,0.75,0.9 --kv drop,keep --tag _layer04 2>&1 | clean > "$OUT/llava_llm_layer04.log"
timeout 120 python3 -m bench.gpu_prefill --reps 5 --warmup 2 --model llava-1.5-7b --mode e2e --tokens 576,2304 \
   --layers 2 --ratios 0 --kv drop --vision-ratios 0.75 --vision-layer 8 --tag _vision 2>&1 | clean \
   > "$OUT/llava_e2e_vision.log"
fi
