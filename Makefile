# Civic Signals: `make run` starts everything on this machine, `make test` runs the whole suite.
# Both install first, from the lock file, with nothing but Python 3.11+ on the machine.
SHELL := /bin/bash
export UV_PYTHON_DOWNLOADS := never
PYTHON ?= python3
UV_VERSION := 0.13.9
UV := $(shell command -v uv 2>/dev/null || echo .uv-bootstrap/bin/uv)
VENV := .venv

.PHONY: install browser run test lint typecheck pytest clean

.uv-bootstrap/bin/uv:
	$(PYTHON) -m venv .uv-bootstrap
	.uv-bootstrap/bin/pip install --quiet --disable-pip-version-check "uv==$(UV_VERSION)"

install: $(if $(filter .uv-bootstrap/bin/uv,$(UV)),.uv-bootstrap/bin/uv)
	$(UV) sync --locked --all-packages

# Debian's chromium, for the browser tests of the insights pages (they skip, saying why, without it).
# Installed only where we are root and apt-get exists, as on CI; elsewhere install it yourself.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "chromium is not installed and cannot be installed here: the browser tests will skip"; fi; }

run: install
	$(VENV)/bin/civicsignals-devstack run

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: install
	$(VENV)/bin/mypy

pytest: install browser
	$(VENV)/bin/pytest

test: lint typecheck pytest

clean:
	rm -rf .data .pytest_cache .mypy_cache .ruff_cache
