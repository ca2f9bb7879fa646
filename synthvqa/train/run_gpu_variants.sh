#!/usr/bin/env bash
# Issue 3, session 4: llava-synth variants trained side by side on one H200 from the bundled weights, each into
# $OUT/<name>/ (weights, the folder's other files as a tar, the log); the best is picked on the CPU afterwards with
# 500 test questions per family. Through the device tool, transformers 5.24 in .whl/:
#   bash synthvqa/train/run_gpu_variants.sh 8 "A:--lr 8e-4 --mix existence=5,colour=4 --hard-no 0.7" \
#       "B:--lr 1e-3 --mix existence=5,colour=4 --hard-no 0.85 --aux-shape 3"
# (arguments: minutes, then one NAME:ARGS per variant, ARGS added to the common ones below).
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp}
MIN=$1; shift
MODEL=${MODEL:-llava-synth}
WORKERS=$(( $(nproc) / $# - 1 ))
for spec in "$@"; do
  name=${spec%%:*}
  # shellcheck disable=SC2086  # ARGS is a list of options
  python3 -m synthvqa.train --model "$MODEL" --init "assets/models/$MODEL" --minutes "$MIN" --batch 64 \
      --warmup 50 --aux-fg 4 --aux-word 2 --workers "$WORKERS" --eval-per-family 0 --out "$OUT/$name" --pack \
      ${spec#*:} > "$OUT/$name.log" 2>&1 &
done
wait
