# Sourced by the GPU scripts (bench/run_gpu_checks.sh, bench/run_gpu_static.sh) at the start of a device call:
# transformers 5.24 from the wheels in .whl/ (the device tool carries them), the versions in force, and clean()
# (drops transformers' own log lines from a command's output). OUT: the device's result folder.
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp}
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site:$PWD || exit 1
fi
python3 -c "import torch, transformers; print(torch.__version__, transformers.__version__, torch.cuda.get_device_name())"
clean() { grep -v '^\[transformers\]' ; }
