# syntax=docker/dockerfile:1
# Ferry's node agent image (the DaemonSet in daemonset/ runs it as `ferry agent`).
#   docker build -t <registry>/ferry:<tag> .
# Two stages: the builder installs the locked dependencies and Ferry itself (as a wheel, not editable)
# into /opt/ferry with uv; the final stage is the same Python base image with that virtual environment
# and nothing else (no uv, no pip cache, no sources, tests or docs).

FROM python:3.11.16-slim-bookworm AS builder

# The same version the Makefile installs.
ARG UV_VERSION=0.13.8

ENV UV_PROJECT_ENVIRONMENT=/opt/ferry \
    UV_PYTHON=/usr/local/bin/python3.11 \
    UV_PYTHON_DOWNLOADS=never \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_NO_CACHE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN pip install --no-cache-dir "uv==${UV_VERSION}"

WORKDIR /src

# Dependencies first (their layer is reused while only Ferry's code changes), exactly as locked.
COPY pyproject.toml uv.lock ./
RUN uv sync --frozen --no-dev --no-install-project --no-editable

# Then Ferry itself, built from pyproject.toml (README.md is its package description).
COPY README.md ./
COPY agent ./agent
RUN uv sync --frozen --no-dev --no-editable


FROM python:3.11.16-slim-bookworm

LABEL org.opencontainers.image.title="ferry" \
      org.opencontainers.image.description="Verified, parallel volume restores for Velero DataDownloads: the node agent" \
      org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="docker.io/library/python:3.11.16-slim-bookworm"

# The virtual environment's interpreter is a link to this image's /usr/local/bin/python3.11.
COPY --from=builder /opt/ferry /opt/ferry

# Bytecode was compiled in the builder; the root filesystem is read-only in the DaemonSet.
ENV PATH="/opt/ferry/bin:${PATH}" \
    VIRTUAL_ENV=/opt/ferry \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

# No USER: the agent runs as root on purpose. Restored files keep their owners (any uid), and block
# volumes are opened as device nodes (see the securityContext in daemonset/daemonset.yaml).
ENTRYPOINT ["ferry", "agent"]
