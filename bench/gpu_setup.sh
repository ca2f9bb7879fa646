# Sourced by the GPU scripts (bench/run_gpu_*.sh) at the start of a device call: transformers 5.24 from the wheels
# in .whl/ (the device tool carries them) and, in the same one pip command, EXTRA_WHEELS (FlashAttention 4's, from
# bench/run_gpu_flash4.sh: a second --target install would replace the cutlass packages' shared folder); the
# versions in force, and clean() (drops transformers' own log lines from a command's output). OUT: the result folder.
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp}
EXTRA_WHEELS=${EXTRA_WHEELS:-}
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    .whl/*.whl $EXTRA_WHEELS && export PYTHONPATH=/tmp/site:/tmp/site/nvidia_cutlass_dsl/dsl_packages:$PWD || exit 1
fi
python3 -c "import torch, transformers; print(torch.__version__, transformers.__version__, torch.cuda.get_device_name())"
clean() { grep -v '^\[transformers\]' ; }
