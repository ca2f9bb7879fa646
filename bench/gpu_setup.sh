# Sourced by the GPU scripts (bench/run_gpu_*.sh) at the start of a device call: transformers 5.24 from the wheels
# in .whl/ (the device tool carries them) and, in the same one pip command, EXTRA_WHEELS (FlashAttention 4's, from
# bench/run_gpu_flash4.sh: a second --target install would replace the cutlass packages' shared folder); the
# versions in force, and clean() (drops transformers' own log lines from a command's output). OUT: the result folder.
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp}
EXTRA_WHEELS=${EXTRA_WHEELS:-}
if ls .whl/*.whl >/dev/null 2>&1; then
  # the same wheels already in /tmp/site (an earlier call on a warm machine, or a process started alongside): keep
  # them, since reinstalling replaces files under a running process's lazy imports
  WANT=$(for w in .whl/*.whl $EXTRA_WHEELS; do basename "$w"; done | sort | tr '\n' ' ')
  if [ "$(cat /tmp/site/.dashvl_wheels 2>/dev/null)" != "$WANT" ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
      .whl/*.whl $EXTRA_WHEELS && echo "$WANT" > /tmp/site/.dashvl_wheels || exit 1
  fi
  export PYTHONPATH=/tmp/site:/tmp/site/nvidia_cutlass_dsl/dsl_packages:$PWD
fi
python3 -c "import torch, transformers; print(torch.__version__, transformers.__version__, torch.cuda.get_device_name())"
clean() { grep -v '^\[transformers\]' ; }
