# Everything sets itself up: a virtual environment in .venv with the locked packages
# (including the SeaweedFS S3 server the tests and the demo start on 127.0.0.1).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.ferry-installed
UV_VERSION := 0.13.8
export UV_PROJECT_ENVIRONMENT := $(VENV)
export UV_PYTHON_DOWNLOADS := never

.PHONY: all demo test lint deploy-lint typecheck layers unit system-deps clean

all: test

$(STAMP): pyproject.toml uv.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check 'uv==$(UV_VERSION)'
	$(BIN)/uv sync --frozen --inexact --python $(BIN)/python
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m tests.demo

lint: $(STAMP) deploy-lint
	$(BIN)/ruff check agent tests bench
	$(BIN)/ruff format --check agent tests bench

# The image cannot be built here (no Docker): lint its Dockerfile. tests/test_deploy.py checks the manifests.
deploy-lint: $(STAMP)
	$(BIN)/hadolint --no-color --failure-threshold style Dockerfile

typecheck: $(STAMP)
	$(BIN)/mypy

layers: $(STAMP)
	$(BIN)/lint-imports

# losetup (loop-device tests) and openssl (a throwaway certificate for the TLS tests), from Debian if absent.
system-deps:
	@command -v losetup >/dev/null && command -v openssl >/dev/null || \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq util-linux openssl; }

unit: $(STAMP) system-deps
	$(BIN)/pytest

test: lint typecheck layers unit

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
