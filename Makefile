# The README's commands.  Every target sets up what it needs: a fresh machine
# with python3, gcc and make is enough, and for `make test` the two system
# tools the deploy tests run, promtool and systemd-analyze (Debian's
# prometheus and systemd packages: .ci/run installs them).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
COLO := $(VENV)/bin/colo
STAMP := $(VENV)/.installed
BUILD_INPUTS := pyproject.toml setup.py proto/colo.proto $(wildcard native/*.c native/*.h native/*.py)

.PHONY: all build test unit system bench demo fuzz lint format xen-test clean

all: build

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# Editable install: builds the cffi module into colo_plane/_native/ and the
# protobuf code into colo_plane/_proto/ (both ignored by git).
$(STAMP): $(PY) $(BUILD_INPUTS)
	$(PY) -m pip install -q -e '.[test]'
	touch $@

build: $(STAMP)

test: build
	$(PY) -m pytest -q

unit: build
	$(PY) -m pytest -q tests/unit

system: build
	$(PY) -m pytest -q tests/system

# The checkpoint fuzzer (tests/fuzz/ckptfuzz.py): FUZZ_RUNS inputs of
# FUZZ_SEED, crashes and violating inputs saved under fuzz-artifacts/.
FUZZ_RUNS ?= 1000000
FUZZ_SEED ?= 1
fuzz: build
	$(PY) tests/fuzz/ckptfuzz.py --runs $(FUZZ_RUNS) --seed $(FUZZ_SEED)

bench: build
	$(COLO) bench stream

demo: build
	$(COLO) demo

lint: build
	$(VENV)/bin/ruff check colo_plane tests native/build_native.py setup.py
	$(VENV)/bin/ruff format --check colo_plane tests native/build_native.py setup.py
	$(VENV)/bin/mypy

format: build
	$(VENV)/bin/ruff format colo_plane tests native/build_native.py setup.py
	$(VENV)/bin/ruff check --fix colo_plane tests native/build_native.py setup.py

# Needs root: builds a Debian dom0 image and boots Xen under QEMU.
xen-test:
	bash tests/xen/run.sh

clean:
	rm -rf build dist *.egg-info colo_plane/_native/_lib* colo_plane/_proto/colo_pb2* fuzz-artifacts
