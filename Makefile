# The README's two commands: `make demo` (the main job) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test lint typecheck bench message-db clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/tidings demo

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(MAKE) typecheck
	$(BIN)/pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# mypy on the library (`tidings` minus the bookshelf example, which is user code). The root is
# the package directory, so mypy reads the package through a staging tree of symlinks (not a
# link to `..`: a loop would break the packaging test's copy of the repository).
LIBRARY := __init__.py fields.py celeryconfig.py exceptions.py domain outbox tasks app port utils
typecheck: $(STAMP)
	mkdir -p .typecheck/tidings
	for n in $(LIBRARY); do ln -sfn ../../$$n .typecheck/tidings/$$n; done
	cd .typecheck && MYPYPATH=. ../$(BIN)/mypy --config-file ../pyproject.toml -p tidings

message-db:  # install Message DB (npm @eventide/message-db) into the local PostgreSQL if missing
	.ci/install-message-db

bench: $(STAMP)
	$(BIN)/python -m bench all

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache .typecheck .tidings
