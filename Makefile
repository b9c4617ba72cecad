# Proconsul — every target sets up what it needs on a fresh machine.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
# Debian packages the test suite drives for real: dig (DNS tests), openssl, wrk (benchmark smoke test), curl,
# chromium (the web UI's browser tests, driven by Playwright with executable_path).
TEST_DEBS := bind9-dnsutils openssl wrk curl chromium prometheus
PYTEST_ARGS ?=

.PHONY: dev test install lint bench clean debs

$(VENV)/bin/activate:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(VENV)/bin/activate
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -e '.[test]'
	@rm -f $(VENV)/.installed-*
	@touch $(STAMP)

install: $(STAMP)

## Start a dev agent in the foreground: server + client, HTTP :8500, DNS :8600, UI at /ui.
dev: install
	$(VENV)/bin/proconsul agent --dev

## Install the Debian packages the tests use (only when root and missing; otherwise say why).
debs:
	@missing=""; for p in $(TEST_DEBS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = "0" ]; then \
		echo "installing Debian packages:$$missing"; \
		(apt-get update -qq || true) && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	else echo "not root: cannot install$$missing; tests needing them will skip with a reason"; fi

## Run the whole default suite (what CI runs).
test: install debs
	$(PY) -m pytest -q -n 2 --dist loadgroup $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check .

bench: install
	$(PIP) install --quiet -e '.[bench]'
	$(PY) bench/run_all.py

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .ruff_cache .hypothesis
