# Two commands do all set-up: `make demo` (train, analyse and report a run that groks) and `make test`.
# Each creates the virtual environment when it is missing.
#
# torch is installed first, pinned, so that pip never resolves the bare `torch>=2.6` requirement to
# a multi-GB download on its own: `pip install torch==2.13.0` takes the local CPU wheel on the lab's
# CPU machines and the default CUDA build from PyPI on a Linux GPU machine. To pick another build:
#   make demo TORCH='torch==2.13.0 --index-url https://download.pytorch.org/whl/cu126'

VENV  ?= .venv
PY    := $(VENV)/bin/python
TORCH ?= torch==2.13.0
RUN   ?= checkpoints/quick-demo

.PHONY: demo test setup clean-venv

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

setup: $(VENV)/.installed

demo: $(VENV)/.installed
	$(VENV)/bin/grokking train quick --out $(RUN)
	$(VENV)/bin/grokking analyze $(RUN)
	$(VENV)/bin/grokking report $(RUN)

test: $(VENV)/.installed
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q

clean-venv:
	rm -rf $(VENV)
