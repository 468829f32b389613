# make demo   train and evaluate on the embedded synthetic dataset (CPU)
# make test   lint (ruff) and the test suite
# make test-fast  lint and the tests not marked slow (no subprocesses, no end-to-end training)
# make bench  the retrieval speed benchmarks (benchmarks/retrieval.py, its default sections;
#             the other scripts in benchmarks/ train for hours: see the projects' READMEs)
# make gpu-bundle  wheels that an offline GPU machine with torch lacks (see tools/gpu_check.sh)
# First use creates .venv and installs everything; later runs reuse it.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test test-fast lint bench gpu-bundle clean-venv

$(STAMP): requirements.txt requirements-dev.txt setup.py
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements.txt -r requirements-dev.txt
	$(PY) -m pip install --quiet --no-deps fastreid==1.4.0
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	@touch $(STAMP)

demo: $(STAMP)
	$(PY) benchmarks/demo.py

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: lint
	$(PY) -m pytest

test-fast: lint
	$(PY) -m pytest -m "not slow"

bench: $(STAMP)
	$(PY) benchmarks/retrieval.py

# The GPU machines lent to this project have torch, Triton, numpy, OpenCV... but no network and
# none of these; faiss-cpu's wheel is abi3, fastreid's, yacs's and termcolor's pure Python.
GPU_PYTHON_VERSION ?= 3.12
GPU_BUNDLE         := .gpu_bundle
GPU_MISSING        := fastreid==1.4.0 $(shell grep -E '^(yacs|termcolor|faiss-cpu)[<>=]' requirements.txt)

gpu-bundle: $(STAMP)
	rm -rf $(GPU_BUNDLE)
	$(PY) -m pip download --quiet --no-deps --only-binary=:all: --implementation cp \
	    --python-version $(GPU_PYTHON_VERSION) --platform manylinux2014_x86_64 \
	    --platform manylinux_2_28_x86_64 -d $(GPU_BUNDLE) $(foreach r,$(GPU_MISSING),"$(r)")
	@ls $(GPU_BUNDLE)

clean-venv:
	rm -rf $(VENV)
