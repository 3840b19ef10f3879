# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip install -q --disable-pip-version-check -c constraints.txt

.PHONY: demo test install install-dev lint typecheck browser readme docs bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: $(PY) pyproject.toml constraints.txt
	$(PIP) -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(PIP) -e '.[dev]'
	touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

## Run the first documented example for real (3 worker processes) and print its result.
demo: install
	$(PY) examples/quickstart.py

lint: install-dev
	$(PY) -m ruff check src tests examples bench scripts
	$(PY) -m ruff format --check src tests examples bench scripts

typecheck: install-dev
	$(PY) -m mypy

## The browser the live page's test drives: Debian's chromium (Playwright's own download host
## is not needed), installed with the system's package manager when missing.
browser:
	@command -v chromium >/dev/null || { \
		SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		$$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq chromium >/dev/null; }

## Lint, type-check and run the whole suite (real gloo processes, a headless browser).
test: lint typecheck browser
	$(PY) -m pytest

## Throughput against the hand-written DDP and single-process baselines, then what
## compile=True buys (several minutes each), then the loop's fixed cost per step (~1 min).
bench: install
	$(PY) -m bench
	$(PY) -m bench.compile
	$(PY) -m bench.step_overhead

## Regenerate the settings table (docs/api.md) from the config model.
readme: install
	$(PY) scripts/update_readme.py

## Build the documentation site (docs/, the API reference from docstrings) into site/.
docs: install-dev
	$(PY) -m mkdocs build --strict

clean:
	rm -rf $(VENV) build site src/*.egg-info .pytest_cache .mypy_cache .ruff_cache
