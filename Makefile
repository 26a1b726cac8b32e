# Two commands on a fresh machine (README):  make run   |   make test
# Everything installs into .venv inside the checkout; nothing is written
# outside it and nothing needs root.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat setup.cfg pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: run test lint bench clean deb arm-smoke

ARCH ?= amd64

$(STAMP):
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	rm -f $(VENV)/.installed-*
	touch $@

## run: install and run the agent on the bundled loopback config (packaging/dev.toml)
run: $(STAMP)
	$(BIN)/edge-agent run --config packaging/dev.toml

## test: install and run the whole test suite, in parallel
test: $(STAMP)
	$(BIN)/python -m pytest -n auto -q

## lint: ruff over everything, mypy over the pure core (pyproject.toml lists it)
lint: $(STAMP)
	$(BIN)/ruff check agent tests bench
	$(BIN)/ruff format --check agent tests bench
	$(BIN)/mypy

## bench: the throughput benchmark (issue 2) and the brownout benchmark (issue 3)
bench: $(STAMP)
	$(BIN)/python bench/throughput.py
	$(BIN)/python bench/brownout.py

## deb: Debian package for ARCH=amd64|arm64 (wheels from PyPI, then dpkg-deb offline)
deb:
	$(MAKE) -C packaging deb ARCH=$(ARCH)

## arm-smoke: as root, install and run the arm64 package under qemu (not part of make test)
arm-smoke:
	$(MAKE) -C packaging arm-smoke

clean:
	rm -rf $(VENV) build dist *.egg-info var bench/out packaging/out
