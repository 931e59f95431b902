# microbatch consumer image. Two stages: the builder holds uv and its cache and installs the project
# (not editable: the wheel carries the built-in pipelines) into /app/.venv; the runtime stage is the
# base image plus that virtualenv, running as numeric UID 10001, fine with a read-only root filesystem.
#
#   docker build -t microbatch .                                     # on python:3.11-slim
#   podman build --format docker --build-arg BASE_IMAGE=localhost/microbatch-base:bookworm \
#       --secret id=ca,src="$SSL_CERT_FILE" -t localhost/microbatch:0.1.0 .   # what `make images` runs
#
# BASE_IMAGE needs python3 (3.11) with venv. Behind a TLS-intercepting proxy, pass its CA bundle as
# the build secret `ca`: it is used by the steps that download, and never stored in a layer.
ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS builder
ARG UV_VERSION=0.13.9
ENV UV_PYTHON_DOWNLOADS=never \
    UV_PROJECT_ENVIRONMENT=/app/.venv \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    PIP_DISABLE_PIP_VERSION_CHECK=1
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN --mount=type=secret,id=ca \
    if [ -s /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi; \
    python3 -m venv /opt/uv && /opt/uv/bin/pip install --no-cache-dir "uv==${UV_VERSION}"
WORKDIR /src

# 1. Dependencies only: this layer is rebuilt only when the lock file changes.
COPY pyproject.toml uv.lock ./
RUN --mount=type=secret,id=ca --mount=type=cache,target=/root/.cache/uv \
    if [ -s /run/secrets/ca ]; then export SSL_CERT_FILE=/run/secrets/ca; fi; \
    /opt/uv/bin/uv sync --frozen --no-dev --no-install-project --python python3

# 2. The project itself, installed as a wheel (--no-editable): nothing in /app points back at /src.
#    --reinstall-package: built from these sources every time. uv's cache keys a local project by its
#    pyproject.toml only, and would otherwise install the wheel of an earlier build of the same version.
COPY README.md ./
COPY consumer ./consumer
COPY pipeline ./pipeline
RUN --mount=type=secret,id=ca --mount=type=cache,target=/root/.cache/uv \
    if [ -s /run/secrets/ca ]; then export SSL_CERT_FILE=/run/secrets/ca; fi; \
    /opt/uv/bin/uv sync --frozen --no-dev --no-editable --reinstall-package microbatch --python python3

FROM ${BASE_IMAGE}
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG SOURCE=unknown
LABEL org.opencontainers.image.title="microbatch" \
      org.opencontainers.image.description="Kafka to PostgreSQL micro-batching consumer" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/app/.venv/bin:${PATH}
COPY --from=builder /app/.venv /app/.venv
WORKDIR /app
# Numeric, so that Kubernetes' runAsNonRoot can verify it without a passwd entry.
USER 10001:10001
EXPOSE 9108
# /healthz of `run`: 200 while the loop makes progress. It assumes the health server answers on loopback
# (metrics_host 0.0.0.0, the default, or 127.0.0.1) at the port of MICROBATCH_METRICS_PORT (default 9108):
# a port set in a config file is not seen. One-shot commands (init-db, produce, dlq replay) serve no
# /healthz: run them with --no-healthcheck (docker run and podman run alike).
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["/app/.venv/bin/python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('MICROBATCH_METRICS_PORT', '9108'), timeout=4)"]
# `run` drains its window and leaves the group on SIGTERM (within shutdown_timeout_s); the other
# commands stop as on Ctrl-C. Python as PID 1 handles both itself.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/app/.venv/bin/microbatch"]
CMD ["run"]
