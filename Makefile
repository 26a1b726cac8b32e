# Two commands on a fresh machine (README):  make run   |   make test
# Everything installs into .venv inside the checkout; nothing is written
# outside it and nothing needs root.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# The compiled ingest core is built by the install (setup.py), so its source is in the stamp.
STAMP  := $(VENV)/.installed-$(shell cat setup.cfg pyproject.toml setup.py agent/_speedups.pyx | cksum | cut -d' ' -f1)

.PHONY: run test lint bench clean deb arm-smoke fuzz fuzz-asan

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

# The suite again with the compiled ingest core switched off (agent/fastpath.py):
# the tests of the ingest path, where the two cores differ.
PURE_TESTS := tests/test_codec.py tests/test_fastpath.py tests/test_e2e.py tests/test_lane.py

## test: install and run the whole test suite, in parallel; then the ingest tests in pure Python
test: $(STAMP)
	$(BIN)/python -m pytest -n auto -q
	EDGE_AGENT_PURE_PYTHON=1 $(BIN)/python -m pytest -n auto -q $(PURE_TESTS)

## fuzz: a million mutated frames, compiled scanner against the reference (not in CI)
fuzz: $(STAMP)
	$(BIN)/python tests/fuzz_scanner.py --inputs 1000000

# fuzz-asan: the same on a build of the scanner under AddressSanitizer (build/asan);
# PYTHONMALLOC=malloc puts every frame in its own malloc block, so ASan sees past its end
ASAN_DIR := build/asan
ASAN_EXT  = $(ASAN_DIR)/_speedups$(shell $(BIN)/python -c "import sysconfig; print(sysconfig.get_config_var('EXT_SUFFIX'))")
fuzz-asan: $(STAMP)
	mkdir -p $(ASAN_DIR)
	$(BIN)/python -m pip install --quiet 'Cython>=3.0,<4'
	$(BIN)/cython -3 agent/_speedups.pyx -o $(ASAN_DIR)/_speedups.c
	cc -shared -fPIC -O1 -g -fsanitize=address -fno-omit-frame-pointer \
		-I$(shell $(BIN)/python -c "import sysconfig; print(sysconfig.get_paths()['include'])") \
		$(ASAN_DIR)/_speedups.c -o $(ASAN_EXT)
	PYTHONMALLOC=malloc ASAN_OPTIONS=detect_leaks=0 LD_PRELOAD=$(shell cc -print-file-name=libasan.so) \
		$(BIN)/python tests/fuzz_scanner.py --inputs 1000000 --extension $(ASAN_EXT)

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
