# `make test` and `make demo` work on a fresh clone: the first call builds .venv (again when
# pyproject.toml changes), installing the pinned torch/torchvision and this package.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: venv test test-fast demo lab data bench clean-venv

$(STAMP): pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install --quiet -e ".[dev]"
	@touch $(STAMP)

venv: $(STAMP)

test: $(STAMP)
	MSDETR_FAST=1 $(PY) -m pytest $(PYTEST_ARGS)

# everything but the notebook and browser tests
test-fast: $(STAMP)
	MSDETR_FAST=1 $(PY) -m pytest -m "not slow and not browser" $(PYTEST_ARGS)

demo: $(STAMP)
	$(PY) -m msdetr_lite demo --out runs/demo

lab: $(STAMP)
	$(VENV)/bin/jupyter lab notebooks/

data: $(STAMP)
	$(PY) -m msdetr_lite data shapes --out data/shapes

bench: $(STAMP)
	$(PY) bench/kernels.py
	$(PY) bench/overhead.py

clean-venv:
	rm -rf $(VENV)
