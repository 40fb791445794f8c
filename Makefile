# One entry point for people and CI. Everything runs from the project venv in .venv,
# which is created and (re)installed on demand: a fresh clone needs only python3.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Touched after a successful install; pip runs again only when pyproject.toml is newer.
STAMP := $(VENV)/.pagewire-installed
PYTEST_FLAGS ?= -q -p no:cacheprovider

.PHONY: install demo up down status test check lint format typecheck unit integration install-check manifests clean

install: $(STAMP)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e ".[dev]"
	touch $(STAMP)

## The README's first command: the local stack, one sample PDF end to end.
demo: $(STAMP)
	$(BIN)/pagewire demo

up: $(STAMP)
	$(BIN)/pagewire dev up

down: $(STAMP)
	$(BIN)/pagewire dev down

status: $(STAMP)
	$(BIN)/pagewire dev status

## Everything CI checks, in the order that fails fastest.
test: lint typecheck
	$(BIN)/pytest $(PYTEST_FLAGS)

check: test

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest $(PYTEST_FLAGS) tests/unit

integration: $(STAMP)
	$(BIN)/pytest $(PYTEST_FLAGS) tests/integration

## The wheel in a fresh venv without extras, run from outside the tree, as the images run it.
install-check: $(STAMP)
	PYTHON=$(BIN)/python scripts/check_install.sh

## Render every kustomize overlay (kubectl kustomize, from the dev dependencies) and check it offline
## against the Kubernetes and CRD schemas and the code; the compose file and Dockerfiles too.
manifests: $(STAMP)
	$(BIN)/pytest $(PYTEST_FLAGS) tests/unit/test_manifests.py tests/unit/test_deploy.py

clean:
	rm -rf build dist *.egg-info .mypy_cache .ruff_cache .pytest_cache
