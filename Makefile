# mess: the commands a newcomer needs. `make run` is the main job, `make test` the tests.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
PACKAGES := libs/contracts libs/runtime libs/corpus tools/dev services/ingest services/embedder services/indexer services/query
STAMP := $(VENV)/.installed
PROJECTS := pyproject.toml $(addsuffix /pyproject.toml,$(PACKAGES))

.PHONY: run demo deploy-check install system-packages up stack down status test test-unit test-integration lint format schemas schema-check bench clean

DEMO_WORKS ?= 40
DEMO_RENDITIONS ?= 3

## The main job: install, start the stack and the services, ingest the demo corpus, serve the API.
run: install up
	$(BIN)/mess-dev demo --works $(DEMO_WORKS) --renditions $(DEMO_RENDITIONS)
	@echo
	@echo "mess is up:  explorer http://127.0.0.1:$${MESS_QUERY_PORT:-8000}/   (open it in a browser)"
	@echo "             API http://127.0.0.1:$${MESS_QUERY_PORT:-8000}   docs http://127.0.0.1:$${MESS_QUERY_PORT:-8000}/docs"
	@echo "             ingest http://127.0.0.1:$${MESS_INGEST_PORT:-8001}   stop everything with: make down"

install: system-packages $(STAMP)

# Debian packages only where missing: fluidsynth renders the music21 demo and test corpus;
# chromium (with its driver) runs the explorer's browser tests.
system-packages:
	@missing=""; \
	command -v fluidsynth >/dev/null || missing="$$missing fluidsynth"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	command -v chromedriver >/dev/null || missing="$$missing chromium-driver"; \
	[ -e /usr/share/sounds/sf2/FluidR3_GM.sf2 ] || missing="$$missing fluid-soundfont-gm"; \
	command -v pg_ctlcluster >/dev/null || command -v postgres >/dev/null || missing="$$missing postgresql"; \
	command -v redis-server >/dev/null || missing="$$missing redis-server"; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:$$missing"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing || \
		{ $$SUDO apt-get update -q && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing; }; \
	fi

# torch first, pinned, so the embedder's range is met by the local CPU build
# instead of a multi-gigabyte CUDA download.
$(STAMP): $(PROJECTS)
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade "pip>=25.1"
	$(BIN)/pip install -q "torch==2.13.0" || $(BIN)/pip install -q "torch>=2.4"
	$(BIN)/pip install -q $(addprefix -e ,$(PACKAGES))
	$(BIN)/pip install -q --group dev
	@touch $(STAMP)

## The local stack and the four services (as processes on loopback).
up: install
	$(BIN)/mess-dev up

## Only the backing services: broker, Postgres, Redis, S3+SQS.
stack: install
	$(BIN)/mess-dev up --no-services

down:
	@if [ -x $(BIN)/mess-dev ]; then $(BIN)/mess-dev down; else echo "nothing to stop"; fi

status:
	$(BIN)/mess-dev status

## The tests, against real endpoints (started by the harness if none answer).
test: install
	$(BIN)/pytest

test-unit: install
	$(BIN)/pytest -m unit

test-integration: install
	$(BIN)/pytest -m integration

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy libs/*/src tools/*/src services/*/src examples
	$(BIN)/mess-dev schemas check

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

## Render and validate docker-compose.yml and every kustomize overlay (installs its tools into .venv).
deploy-check: install
	bash deploy/check.sh

schemas: install
	$(BIN)/mess-dev schemas export

schema-check: install
	$(BIN)/mess-dev schemas check

clean: down
	rm -rf $(VENV) .mess .mypy_cache .ruff_cache .pytest_cache
