"""Speed benchmarks (run as modules: ``python -m bench.gpu_prefill``); results in RESULTS.md."""
