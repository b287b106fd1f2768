# evoflow: `make run` starts everything locally, `make test` runs every check, `make bench`
# measures. Each target installs what it needs first (machine packages, the virtualenv, the
# embedded PostgreSQL), so a fresh clone needs nothing else.

SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
# Locked sets (compiled from requirements*.in, see their headers): requirements.txt is what runs,
# requirements-dev.txt adds what the checks need. A stamp per set, named by the hash of the files
# it installs, so a changed lock reinstalls.
RUNTIME_HASH := $(shell cat requirements.txt | sha1sum | cut -c1-12)
DEV_HASH := $(shell cat requirements.txt requirements-dev.txt | sha1sum | cut -c1-12)
DEPS_STAMP := $(VENV)/.deps-runtime-$(RUNTIME_HASH)
DEV_DEPS_STAMP := $(VENV)/.deps-dev-$(DEV_HASH)

export EVOFLOW_PG_PORT ?= 54329
export EVOFLOW_WEB_PORT ?= 8000

.PHONY: run test lint typecheck pytest bench topology deps dev-deps system-deps db db-stop db-status migrate clean

run: db
	DEBUG=$${DEBUG:-1} $(BIN)/python -m devtools.devstack

test: db lint typecheck pytest

lint: dev-deps db
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	DEBUG=1 $(BIN)/python manage.py makemigrations --check --dry-run

typecheck: dev-deps
	$(BIN)/mypy

pytest: dev-deps db
	$(BIN)/pytest $(PYTEST_ARGS)

bench: db
	DEBUG=$${DEBUG:-1} $(BIN)/python -m bench --own-database --repeat $(or $(REPEAT),3) $(if $(QUICK),--quick)

# The production topology on this machine (docs/operations.md): PostgreSQL with durable commits,
# PgBouncer in transaction pooling, Redis, two gunicorn groups and two workers; Ctrl-C stops it.
topology: deps
	$(BIN)/python -m devtools.topology

system-deps:
	@bash devtools/scripts/install-system-packages.sh

deps: system-deps $(DEPS_STAMP)

$(DEPS_STAMP): requirements.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.txt
	@rm -f $(VENV)/.deps-runtime-*
	@touch $@

dev-deps: system-deps $(DEV_DEPS_STAMP)

# The dev lock holds the runtime pins too, so installing it also satisfies the runtime stamp.
$(DEV_DEPS_STAMP): requirements.txt requirements-dev.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	@rm -f $(VENV)/.deps-runtime-* $(VENV)/.deps-dev-*
	@touch $@ $(DEPS_STAMP)

# The embedded cluster under .local/, unless DATABASE_URL points elsewhere. `.local/env` marks
# the checkout as a local one, so `.venv/bin/python manage.py ...` runs in local mode here.
db: deps .local/env
	@if [ -z "$$DATABASE_URL" ]; then $(BIN)/python -m devtools.localdb start >/dev/null; fi

.local/env:
	@mkdir -p .local
	@printf '# Written by make: this checkout runs locally (see README, Settings).\nDEBUG=1\n' > $@

db-stop:
	@test ! -x $(BIN)/python || $(BIN)/python -m devtools.localdb stop

db-status:
	@$(BIN)/python -m devtools.localdb status

migrate: db
	DEBUG=$${DEBUG:-1} $(BIN)/python manage.py migrate

clean: db-stop
	rm -rf $(VENV) .local .pytest_cache .mypy_cache .ruff_cache test-artifacts
