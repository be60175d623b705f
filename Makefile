# Two commands set everything up on a fresh machine: `make run` and `make test`.
# scripts/setup-machine installs the Debian packages (as root) or says which are missing (as
# anyone else); the first run of either target then creates .venv and builds the C extension.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
# The config every target uses: $CONSENT_RELAY_CONFIG when set, else the example.
CONFIG ?= $(or $(CONSENT_RELAY_CONFIG),config.example.toml)
# Never let Playwright download a browser: the tests use Debian's /usr/bin/chromium.
export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD := 1

.PHONY: run test setup-test bench check-config docs clean

$(STAMP): pyproject.toml setup.py policies/_speedups.c policies/_speedups_buf.h policies/_speedups_html.h policies/_speedups_kinds.h
	scripts/setup-machine run
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -e '.[test]'
	touch $(STAMP)

# The relay on config.example.toml; when nothing answers on its upstream (127.0.0.1:2526),
# a capture sink there writes every delivered copy to var/delivered/.
run: $(STAMP)
	$(BIN)/consent-relay serve --sink -c $(CONFIG)

# setup-test first: on a machine that lacks a tool, stop before building or running anything.
# compileall first: the suite starts the relay's Python in many child processes (serve, its workers,
# the CLI), and where PYTHONDONTWRITEBYTECODE is set each of them would compile relay/ and policies/
# from source again. Reading a .pyc still happens with it set; writing them is what it stops.
test: setup-test $(STAMP)
	$(BIN)/python -m compileall -q -j 0 relay policies bench tests >/dev/null
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

setup-test:
	scripts/setup-machine test

check-config: $(STAMP)
	$(BIN)/consent-relay check-config -c $(CONFIG)

# Regenerate the reference generated from the code (docs/configuration.md, cli.md, metrics.md, replies.md).
docs: $(STAMP)
	$(BIN)/python scripts/gen-docs.py

bench: $(STAMP)
	$(BIN)/python -m bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) var .pytest_cache
