# `make test` and `make demo` work on a fresh clone: the first call builds .venv (again when
# pyproject.toml changes), installing the pinned torch/torchvision and this package.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: venv test test-fast test-gpu demo lab data notebooks zoo zoo-train ship render bench regime clean-venv

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

# on a machine with a CUDA device: build the CUDA extension, `pytest -m gpu`, the kernel benchmark
# at the paper's shapes (bench/gpu_check.sh; its python3, or PYTHON=...). `make test` skips the GPU
# tests cleanly where there is no device.
test-gpu:
	bash bench/gpu_check.sh

demo: $(STAMP)
	$(PY) -m msdetr_lite demo --out runs/demo

lab: $(STAMP)
	$(VENV)/bin/jupyter lab notebooks/

# the .ipynb from their jupytext sources (notebooks/NN_name.py), outputs stripped
notebooks: $(STAMP)
	$(VENV)/bin/jupytext --to ipynb --update notebooks/0*.py
	$(VENV)/bin/jupyter nbconvert --clear-output --inplace notebooks/0*.ipynb

# the notebooks' four models at the demo's recipe: the shipped ones (weights/, seconds), else trained here
zoo: $(STAMP)
	$(PY) -m msdetr_lite.lab build

# all four trained here with every epoch's snapshot (about 40 min on 2 cores, two at a time), then
# `make ship` packs them into weights/ (fp16, verified: msdetr_lite/lab/shipped.py)
zoo-train: $(STAMP)
	$(PY) -m msdetr_lite.lab build --train --schemes ms o2o & $(PY) -m msdetr_lite.lab build --train --schemes hybrid group; wait

ship: $(STAMP)
	$(PY) -m msdetr_lite.lab ship

# every notebook in full mode: HTML under docs/notebooks/, README thumbnails under docs/images/
render: zoo
	$(PY) -m msdetr_lite.lab render

data: $(STAMP)
	$(PY) -m msdetr_lite data shapes --out data/shapes

bench: $(STAMP)
	$(PY) bench/kernels.py
	$(PY) bench/overhead.py
	$(PY) bench/epoch.py

# where MS-DETR beats o2o, NMS-free and with NMS (resumable; several sittings on a CPU)
regime: $(STAMP)
	$(PY) bench/regime.py

clean-venv:
	rm -rf $(VENV)
