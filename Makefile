# Latent Diffusion Tutorials. Two commands do everything on a fresh machine:
#   make run    set up, prepare the data, execute every notebook (default preset;
#               DATASET=fashion_mnist or cifar10 runs the weight story, 01-03 and 05, on it)
#   make test   set up, prepare the data, run the whole test suite (smoke preset)
# Also: make lab (JupyterLab), make data, make bench, make strip, make clean.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PRESET ?= default
DATASET ?=
STAMP  := $(VENV)/.installed-stamp

.PHONY: help setup data run test lab bench strip clean browser

help:
	@sed -n '1,7p' Makefile

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e '.[test]'
	@touch $(STAMP)

setup: $(STAMP)

data: setup
	$(PY) -m helpers.data prepare

RUN_DIR ?= runs/$(shell date +%Y%m%d-%H%M%S)

run: data
	$(if $(DATASET),LDT_DATASET=$(DATASET) )$(PY) -m helpers.series --preset $(PRESET) --run-dir $(RUN_DIR)
	LDT_RUN_DIR=$(CURDIR)/$(RUN_DIR) LDT_PRESET=$(PRESET) $(MAKE) --no-print-directory bench

test: data browser
	LDT_PROGRESS=0 $(PY) -m pytest tests

# The browser test (tests/test_browser.py) drives JupyterLab in Debian's chromium through
# Playwright (browsers cannot be downloaded here): install chromium once if it is missing.
browser:
	@command -v chromium >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } \
	  || echo "chromium could not be installed: tests/test_browser.py will be skipped"

# Saved outputs never reach a commit: the git filter in .gitattributes strips them on `git add`.
lab: data
	$(PY) -m helpers.notebooks install-filter
	$(VENV)/bin/jupyter lab notebooks/

bench: setup
	$(PY) benchmarks/bench_zoo_training.py
	$(PY) benchmarks/bench_ddim_sampling.py --preset $(PRESET)
	$(PY) benchmarks/bench_digit_sampling.py --preset $(PRESET)
	$(PY) benchmarks/bench_threads.py

strip: setup
	$(PY) -m helpers.notebooks strip notebooks/*.ipynb

clean:
	rm -rf artifacts runs outputs .pytest_cache
