# Two commands do everything on a fresh machine:
#   make demo   set up .venv, compile the bundled GPT example, print its explanation and IO report
#   make test   set up .venv and run the whole test suite (kernels under Triton's interpreter)
PYTHON ?= python3
VENV   ?= .venv
# The CPU build of torch that lies on this kind of machine; on a GPU machine, where torch
# is already installed, use `make TORCH= test` (or see README: GPU).
TORCH  ?= torch==2.13.0

BIN := $(VENV)/bin

.PHONY: setup demo test test-gpu
setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q $(TORCH) -e '.[test]'
	touch $@

demo: setup
	IOAWARE_INTERPRET=1 $(BIN)/ioaware demo

test: setup
	IOAWARE_INTERPRET=1 $(BIN)/python -m pytest -q -n 2 --durations=15

test-gpu: setup
	$(BIN)/python -m pytest -q -m gpu tests
