# make test: set up .venv with the pinned constraints and run the test suite.
# make demo: same set-up, then compress a small Qwen2-VL, generate, and show what was halted per layer.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test demo bench-cpu clean

$(STAMP): pyproject.toml constraints.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e ".[dev]"
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q

demo: $(STAMP)
	$(BIN)/python -m dashvl.demo

bench-cpu: $(STAMP)
	$(BIN)/python bench/cpu_prefill.py

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
