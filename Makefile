# ecgcad — `make run` starts the embedded service; `make test` runs the whole suite.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)
CONFIG ?=
PYTEST_ARGS ?=

.PHONY: run test test-slow lint bench bench-full bench-gpu install clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# CPU machines: this exact torch (a CPU wheel is on local disk here; an unpinned torch pulls several GB).
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[dev,postgres]'
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

run: install
	$(VENV)/bin/ecgcad migrate $(if $(CONFIG),--config $(CONFIG),)
	$(VENV)/bin/ecgcad serve $(if $(CONFIG),--config $(CONFIG),)

test: install
	$(PY) -m pytest -m "not slow" -q $(PYTEST_ARGS)

test-slow: install
	$(PY) -m pytest -m slow -q $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check ecgcad tests bench
	$(VENV)/bin/ruff format --check ecgcad tests bench
	$(VENV)/bin/mypy ecgcad
	$(VENV)/bin/lint-imports

# `make bench` runs every benchmark at its quick size (each prints its baseline beside it and writes
# bench/results/*.json); `make bench-full` runs the full sizes (cold torch.compile and full training: long).
bench: install
	mkdir -p bench/results
	for f in bench/bench_*.py; do \
	  args=""; grep -q -- '"--quick"' $$f && args="--quick"; grep -q -- '"--reduced"' $$f && args="--reduced"; \
	  echo "== $$f $$args"; $(PY) $$f $$args || exit 1; done

bench-full: install
	mkdir -p bench/results
	for f in bench/bench_*.py; do echo "== $$f"; $(PY) $$f || exit 1; done

bench-gpu: install
	bash bench/gpu.sh bench/results/gpu

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
