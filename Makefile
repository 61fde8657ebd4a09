# The two set-up commands of the README: `make demo` and `make test`.
VENV ?= .venv
PYTHON ?= python3
# Command-line tools the tests run, in a venv of their own: check-jsonschema in .venv would
# upgrade click past the version Faust pins. The stamp names the version: a bump reinstalls.
TOOLS ?= .venv-tools
CHECK_JSONSCHEMA_VERSION = 0.39.0
TOOLS_STAMP = $(TOOLS)/.check-jsonschema-$(CHECK_JSONSCHEMA_VERSION)
APT_PACKAGES = redis-server prometheus postgresql chromium

.PHONY: demo test system-deps lint tools

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[dev]'
	touch $@

# Debian packages the tests start: redis-server (a private Redis), prometheus (the server, for
# tests/prometheus_server.py, and promtool, for the alert rule tests: one package), PostgreSQL's
# initdb/pg_ctl (a private cluster, tests/pg.py; Debian keeps them off PATH) and chromium.
system-deps:
	@missing=""; \
	command -v redis-server >/dev/null || missing="$$missing redis-server"; \
	{ command -v promtool && command -v prometheus; } >/dev/null || missing="$$missing prometheus"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	command -v initdb >/dev/null || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing postgresql"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	  else echo "missing Debian packages:$$missing (run as root, or install them)"; exit 1; fi; \
	fi

$(TOOLS_STAMP):
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install -q --upgrade pip
	$(TOOLS)/bin/pip install -q 'check-jsonschema==$(CHECK_JSONSCHEMA_VERSION)'
	touch $@

# check-jsonschema validates docker-compose.yml against the Compose Specification (tests/unit/test_compose.py).
tools: $(TOOLS_STAMP)

demo: $(VENV)/.installed
	@command -v redis-server >/dev/null || $(MAKE) --no-print-directory system-deps
	$(VENV)/bin/seqguard demo

test: $(VENV)/.installed system-deps tools
	TOOLS_VENV=$(abspath $(TOOLS)) $(VENV)/bin/pytest

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check workers tables tests benchmarks
	$(VENV)/bin/mypy workers tables
