# microbatch — every target a user or CI needs. `make help` lists them.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
UV_VERSION := 0.13.9
TOOLS := .tools
UV := $(TOOLS)/bin/uv
VENV := .venv
PY := $(VENV)/bin/python
export UV_PYTHON_DOWNLOADS := never
export UV_PROJECT_ENVIRONMENT := $(VENV)

.PHONY: help setup tools images check lint format typecheck manifests docs test chaos bench bench-quick bench-ab fuzz unit integration containers up down demo run clean

help: ## List every target with what it does
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[36m%-12s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(UV):
	@$(PYTHON) -m venv $(TOOLS)
	@$(TOOLS)/bin/pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)

$(VENV)/.synced: $(UV) pyproject.toml uv.lock
	@$(UV) sync --frozen --python $(PYTHON) --quiet
	@touch $@

setup: $(VENV)/.synced tools ## Create .venv from the lock file (uv), install tools, check for Java, Maven, PostgreSQL
	@$(PY) -m devstack preflight

check: lint typecheck manifests ## Static gates: ruff lint + format check, hadolint, mypy --strict, Kubernetes manifests and alert rules
lint: $(VENV)/.synced ## ruff lint and format check; hadolint on the Dockerfile and the local images' Containerfiles
	@$(VENV)/bin/ruff check .
	@$(VENV)/bin/ruff format --check .
	@$(VENV)/bin/hadolint Dockerfile images/*/Containerfile
format: $(VENV)/.synced ## Apply ruff's formatting and safe fixes
	@$(VENV)/bin/ruff format .
	@$(VENV)/bin/ruff check --fix .
typecheck: $(VENV)/.synced ## mypy --strict on consumer, pipeline, devstack, bench and tests
	@$(VENV)/bin/mypy consumer pipeline devstack bench tests

manifests: $(VENV)/.synced ## deploy/kubernetes rendered and checked: kubernetes-validate (schemas), promtool (the PrometheusRule)
	@command -v promtool >/dev/null || { echo "promtool is not installed: run 'make tools'"; exit 1; }
	@out=$$(mktemp -d); trap 'rm -rf "$$out"' EXIT; \
	$(PY) -m devstack.kubernetes render "$$out"; \
	$(VENV)/bin/kubernetes-validate --strict --quiet -k 1.30.0 -k 1.37.0 "$$out/kubernetes.yaml"; \
	promtool check rules "$$out/rules.yml"; \
	promtool test rules grafana/alerts_test.yml

docs: $(VENV)/.synced ## Regenerate the settings and metrics reference in README.md from the code
	@$(PY) -m consumer.docs --write README.md

test: setup check images ## Everything on a fresh machine: set-up, static gates, images, unit, integration, container and quick chaos tests
	@MICROBATCH_REQUIRE_INTEGRATION=1 $(PY) -m pytest tests

images: setup ## Build (or find cached) the local container images: Kafka, PostgreSQL, Prometheus, microbatch (podman, as root)
	@$(PY) -m devstack.images

containers: images ## The container tests only: the image end to end, Testcontainers, the compose stack
	@MICROBATCH_REQUIRE_INTEGRATION=1 $(PY) -m pytest tests/containers

chaos: setup ## The full fault-injection suite (≈20 min); writes chaos-report.md and chaos-report.json
	@MICROBATCH_CHAOS=full MICROBATCH_CHAOS_REPORT_DIR=$(CURDIR) MICROBATCH_REQUIRE_INTEGRATION=1 $(PY) -m pytest tests/chaos

bench: setup ## The benchmark of record (≈20 min, with Kafka Connect and quixstreams): bench/results/latest.json, BENCHMARKS.md, bench/results/chart.png
	@$(PY) -m bench --mode full

bench-quick: setup ## A quick benchmark of every variant (≈10 min), same outputs
	@$(PY) -m bench --mode quick

bench-ab: setup ## Drain rate of this checkout against AGAINST=<rev>, interleaved in one run
	@$(PY) -m bench.ab --against $(AGAINST)

unit: $(VENV)/.synced ## Unit tests only (no services, seconds)
	@$(PY) -m pytest tests/unit

fuzz: $(VENV)/.synced ## The decoder's properties for 1,000,000 new cases, its fast path's for 300,000 (tens of minutes; `make test` runs 29,000)
	@MICROBATCH_FUZZ=1 $(PY) -m pytest tests/unit/test_decode_properties.py tests/unit/test_struct_reader.py --timeout=0 --hypothesis-show-statistics

integration: setup ## Integration tests only (starts real Kafka and PostgreSQL)
	@MICROBATCH_REQUIRE_INTEGRATION=1 $(PY) -m pytest tests/integration

up: setup ## Start local Kafka + PostgreSQL in the background; writes .devstack/env
	@$(PY) -m devstack up

down: ## Stop what `make up` started and delete its data
	@if [ -x $(PY) ]; then $(PY) -m devstack down; else rm -rf .devstack; fi

tools: ## Install Prometheus, docker-compose v1, podman, debootstrap and openssl (the test PKI) from Debian's packages; configure podman
	@missing=""; command -v prometheus >/dev/null || missing="$$missing prometheus"; \
	command -v openssl >/dev/null || missing="$$missing openssl"; \
	command -v docker-compose >/dev/null || missing="$$missing docker-compose"; \
	command -v podman >/dev/null || missing="$$missing podman"; \
	command -v debootstrap >/dev/null || missing="$$missing debootstrap"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing$$missing from Debian's packages"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else \
	    echo "note:$$missing not installed and cannot be (needs root and apt-get): those tests will be skipped"; \
	  fi; \
	fi
	@# podman sets rlimits on every container by default, which this kind of sandbox forbids: turn that off.
	@if [ "$$(id -u)" = 0 ] && command -v podman >/dev/null; then $(PYTHON) -c 'import sys; sys.path.insert(0, "."); \
	  from devstack.engine import configure; configure() and print("podman: default_ulimits = [] in /etc/containers/containers.conf")'; fi

run: up ## Run the long-lived consumer against the local services (Ctrl-C to stop)
	@set -a; . .devstack/env; set +a; $(VENV)/bin/microbatch init-db && exec $(VENV)/bin/microbatch run

clean: down ## Remove the venv, tool caches and test caches (keeps the Maven/Kafka jar cache)
	@rm -rf $(VENV) $(TOOLS) .pytest_cache .mypy_cache .ruff_cache

DEMO_PIPELINE ?= invoices
demo: setup ## Run the main job end to end on local services and verify the totals (≈1-2 min); DEMO_PIPELINE=vendor-invoices for the lookups example
	@$(PY) -m devstack.demo --pipeline $(DEMO_PIPELINE)
