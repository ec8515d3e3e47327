# Everything sets itself up: a virtual environment in .venv with the locked packages
# (including the SeaweedFS S3 server the tests and the demo start on 127.0.0.1).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.ferry-installed
UV_VERSION := 0.13.8
export UV_PROJECT_ENVIRONMENT := $(VENV)
export UV_PYTHON_DOWNLOADS := never

.PHONY: all demo test lint deploy-lint typecheck layers unit system-deps bench bench-report clean

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

# From Debian if absent: losetup (loop-device tests), openssl (a throwaway certificate for the TLS tests),
# restic and casync (the tools the benchmark compares Ferry with; its smoke run is part of the tests).
system-deps:
	@command -v losetup >/dev/null && command -v openssl >/dev/null && command -v restic >/dev/null && \
		command -v casync >/dev/null || { apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq util-linux openssl restic casync; }

unit: $(STAMP) system-deps
	$(BIN)/pytest

test: lint typecheck layers unit

# The full benchmark (about 40 minutes, 30 GB of scratch space under /var/tmp): see docs/PERFORMANCE.md.
bench: $(STAMP) system-deps
	$(BIN)/python -m bench
	$(BIN)/python -m bench.link
	$(BIN)/python -m bench.resume
	$(BIN)/python -m bench.backup
	$(BIN)/python -m bench.first_byte
	$(BIN)/python -m bench.planning
	$(BIN)/python -m bench.hostile
	$(BIN)/python -m bench.fidelity
	$(BIN)/python -m bench.velero_flow
	$(BIN)/python -m bench.knobs
	$(BIN)/python -m bench.profile --workload block --size-mib 2048
	$(BIN)/python -m bench.profile --workload file --size-mib 2048
	$(BIN)/python -m bench.stages
	$(BIN)/python -m bench.report

bench-report: $(STAMP)
	$(BIN)/python -m bench.report

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
