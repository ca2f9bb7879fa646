#!/usr/bin/env bash
# Session 3's training calls (issue 3): both bundled models continue from their weights at once on one H200,
# with the reading losses (--aux-word) and a per-model mix of families; the whole call trains, and the
# evaluation (500 per family) runs afterwards on the CPU. Through the device tool, transformers 5.24 in .whl/:
#   bash synthvqa/train/run_gpu.sh 7.8 reading=4 reading=4                                   # stage 4
#   bash synthvqa/train/run_gpu.sh 6.5 position=4 existence=3,colour=3,reading=3 6e-4        # stage 5
# (arguments: minutes, qwen2-vl-synth's --mix, llava-synth's --mix, learning rate). A 3-step smoke run first checks the fast
# Qwen2-VL path on this GPU; if it fails, Qwen2-VL trains on the stock path (--no-fast) instead.
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp}
MIN=${1:-7.8}
LR=${4:-1e-3}
declare -A MIX=([qwen2-vl-synth]=${2:-reading=4} [llava-synth]=${3:-reading=4})
FAST=""
python3 -m synthvqa.train --model qwen2-vl-synth --steps 3 --batch 8 --tiny --eval-per-family 0 \
    --out /tmp/smoke > "$OUT/smoke.log" 2>&1 || FAST="--no-fast"
for m in qwen2-vl-synth llava-synth; do
  extra=""; [ $m = qwen2-vl-synth ] && extra="$FAST"
  python3 -m synthvqa.train --model $m --init assets/models/$m --minutes "$MIN" --batch 64 --lr "$LR" \
      --warmup 50 --aux-fg 4 --aux-word 2 --mix "${MIX[$m]}" --workers 7 --eval-per-family 0 --out "$OUT" \
      --pack $extra > "$OUT/$m.log" 2>&1 &
done
wait
