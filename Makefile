# Thin front for `python -m mfutils` (the `mf` command). Every target creates .venv on first use.
# Usage: make reproduce [MODEL=tiny] [SMOKE=1]   make test   make retrain   make lab   make venv
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
MODEL ?= tiny
SMOKE ?= 0
export OMP_WAIT_POLICY ?= PASSIVE
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_NO_ADVISORY_WARNINGS := 1

.PHONY: venv reproduce test retrain lab eval info clean-results

venv: $(STAMP)

# torch first, alone: `pip install torch==2.13.0` takes the CPU wheel on these machines; letting another
# package pull torch in would fetch a multi-GB CUDA build. Never torchvision (breaks transformers here).
$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev]'
	$(PY) -m ipykernel install --sys-prefix --name mfutils --display-name "Python (mfutils)" >/dev/null
	touch $(STAMP)

reproduce: $(STAMP)
	$(PY) -m mfutils reproduce --model $(MODEL) $(if $(filter 1,$(SMOKE)),--smoke,)

# Unit, property, architecture and chain tests, then every notebook at its default parameters (nbval).
# Outputs go to a temporary folder (MF_OUT), never over figures/ and results/.
test: $(STAMP)
	MF_OUT=$$(mktemp -d) $(PY) -m pytest -q tests notebooks --nbval-lax --nbval-current-env -p no:cacheprovider

retrain: $(STAMP)
	$(PY) -m mfutils train

eval: $(STAMP)
	$(PY) -m mfutils eval --model $(MODEL)

info: $(STAMP)
	$(PY) -m mfutils info

lab: $(STAMP)
	$(VENV)/bin/jupyter lab --notebook-dir=.
