# Two commands on a fresh machine: `make serve` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
CONFIG ?= config
HOST   ?= 127.0.0.1
PORT   ?= 8000

export RAY_USAGE_STATS_ENABLED := 0
# Ray binds every listener to loopback instead of the machine's address.
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER := 0

.PHONY: install serve test unit integration lint typecheck bench clean

install: $(STAMP)

# Re-install only when the project metadata changes; the stamp makes it idempotent.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

serve: install
	$(BIN)/astromesh serve --config $(CONFIG) --host $(HOST) --port $(PORT)

lint: install
	$(BIN)/ruff check astromesh_ray tests
	$(BIN)/ruff format --check astromesh_ray tests

typecheck: install
	$(BIN)/mypy

unit: install
	$(BIN)/python -m pytest tests/unit -q

integration: install
	$(BIN)/python -m pytest tests/integration -q

# pytest exits 5 when it collects nothing: that fails the build like any error.
test: install lint typecheck
	$(BIN)/python -m pytest -q -p no:cacheprovider

bench: install
	@for f in benchmarks/*.py; do echo "== $$f"; $(BIN)/python $$f || exit 1; done

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
