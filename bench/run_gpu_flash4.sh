#!/usr/bin/env bash
# FlashAttention 4 on the H200, in two device calls made back to back (the machine keeps /root for 30 s):
#   1. bash bench/run_gpu_flash4.sh stash    carry .fa4/a, .fa4/small and .whl: kept under /root/fa4
#   2. bash bench/run_gpu_flash4.sh          carry .fa4/b: the wheels assembled and installed, then the checks
#                                            (tests/gpu/test_flash4.py) and the prefill/generate benchmarks
# Why two calls: nvidia-cutlass-dsl-libs-cu13 is 92 MB, over one call's 64 MiB, so it travels in halves.
# Fill .fa4/ here (once) with: bash bench/run_gpu_flash4.sh fetch      (needs PyPI; the device has none)
# STEPS (default "checks prefill generate") picks what step 2 runs; "keep": kv="keep" on FA4 (keep_attention's
# kernel checks and bench/gpu_keep.py at Qwen2-VL-7B shapes).
set -uo pipefail
STASH=/root/fa4
WHEELS="flash-attn-4==4.0.0b36 nvidia-cutlass-dsl==4.8.1 nvidia-cutlass-dsl-libs-base==4.8.1
  nvidia-cutlass-dsl-libs-core==4.8.1 quack-kernels==0.6.5 apache-tvm-ffi==0.1.15.post2 torch-c-dlpack-ext==0.1.5"
CU13=nvidia_cutlass_dsl_libs_cu13-4.8.1-cp312-cp312-manylinux_2_28_x86_64.whl
case "${1:-run}" in
fetch)
  mkdir -p .fa4/small .fa4/a .fa4/b /tmp/fa4dl
  pip download -q --no-deps --only-binary :all: --python-version 3.12 --platform manylinux_2_28_x86_64 \
    --platform manylinux_2_24_x86_64 --platform any -d .fa4/small $WHEELS || exit 1
  pip download -q --no-deps --only-binary :all: --python-version 3.12 --platform manylinux_2_28_x86_64 \
    -d /tmp/fa4dl nvidia-cutlass-dsl-libs-cu13==4.8.1 || exit 1
  # uneven halves: call 1 also carries the small wheels and .whl/ (transformers), so its half is the smaller
  head -c 34M /tmp/fa4dl/$CU13 > .fa4/a/cu13.part.aa && tail -c +$((34 * 1048576 + 1)) /tmp/fa4dl/$CU13 \
    > .fa4/b/cu13.part.ab && (cd /tmp/fa4dl && sha256sum $CU13) > .fa4/cu13.sha256
  ls -la .fa4/*; exit 0 ;;
stash)
  mkdir -p $STASH/whl && cp .fa4/a/* .fa4/small/*.whl .fa4/cu13.sha256 $STASH/ && cp .whl/*.whl $STASH/whl/ \
    && ls $STASH; exit 0 ;;
esac
[ -f $STASH/cu13.part.aa ] && [ -f .fa4/b/cu13.part.ab ] || { echo "run 'stash' first, in the call just before" >&2; exit 1; }
cat $STASH/cu13.part.aa .fa4/b/cu13.part.ab > $STASH/$CU13 && (cd $STASH && sha256sum -c cu13.sha256) || exit 1
ls .whl/*.whl >/dev/null 2>&1 || { mkdir -p .whl && cp $STASH/whl/*.whl .whl/; }  # transformers, from call 1
EXTRA_WHEELS="$(ls $STASH/*.whl | tr '\n' ' ')"
source "$(dirname "$0")/gpu_setup.sh"
python3 -c "import flash_attn.cute, transformers.utils as u; print('flash_attn.cute ok; fa4 available:', u.is_flash_attn_4_available())" || exit 1
for step in ${STEPS:-checks prefill generate}; do
  case $step in
  checks)
    DASHVL_GPU_REPORT="$OUT/flash4.json" timeout ${CHECK_TIMEOUT:-240} python3 -m pytest -q -p no:cacheprovider \
      tests/gpu/test_flash4.py 2>&1 | clean | tail -15 ;;
  prefill)
    for model in qwen2-vl-7b llava-1.5-7b; do
      for attn in sdpa flash_attention_4; do
        timeout ${PREFILL_TIMEOUT:-200} python3 -m bench.gpu_prefill --model $model --mode llm --attn $attn \
          --tokens ${TOKENS:-1088,4160,16448} --ratios 0,0.5,0.75 --layers 2 --kv drop --reps 5 --warmup 2 \
          --tag _fa4cmp --out "$OUT" 2>&1 | clean | grep -v "^{'device'"
      done
    done ;;
  keep)
    DASHVL_GPU_REPORT="$OUT/keep_kernels_fa4.json" timeout ${CHECK_TIMEOUT:-240} python3 -m pytest -q \
      -p no:cacheprovider tests/gpu/test_keep_kernels.py tests/gpu/test_flash4.py -k "fa4 or flash_attention_4" 2>&1 | clean | tail -15
    timeout ${KEEP_TIMEOUT:-200} python3 -m bench.gpu_keep --model qwen2-vl-7b --attn flash_attention_4 \
      --tokens ${TOKENS:-1088,4160,16448} --reps 5 --warmup 2 --out "$OUT" 2>&1 | clean | grep -v "^{'device'" ;;
  generate)
    timeout ${GEN_TIMEOUT:-240} python3 -m bench.gpu_generate --model qwen2-vl-7b --mode llm --attn flash_attention_4 \
      --cache dynamic --settings "unmodified;ratio=0;ratio=0.75,layer=2;unmodified" \
      --tokens 1088,16448 --batch 1 --new 32 --reps 3 --out "$OUT" 2>&1 | clean ;;
  esac
done
