# The two README commands: `make serve` and `make test`. Each builds .venv on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
SLUICE := $(VENV)/bin/sluice
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: install serve test lint bench-peers clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip wheel
	$(PIP) install -e '.[dev]'
	touch $@

install: $(VENV)/.installed

serve: install
	$(SLUICE) serve $(ARGS)

lint: install
	$(VENV)/bin/ruff check serve kernels benchmarks tests

test: install lint
	$(SLUICE) models pull smollm2-135m-instruct
	$(VENV)/bin/pytest -q $(PYTEST_ARGS)

bench-peers: install
	$(SLUICE) bench peers

clean:
	rm -rf $(VENV) build *.egg-info
