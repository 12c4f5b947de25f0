# `make demo`: install, make the synthetic data, train a few epochs, test.
# `make test`: the fast tier of the tests; `make test-all`: every test (what CI runs).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup demo test test-all clean

$(VENV)/.installed: requirements.txt requirements-dev.txt requirements-extras.txt
	@echo "== creating $(VENV) and installing the requirements (a few minutes the first time)"
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -r requirements-dev.txt
	touch $@
	@echo "== installed into $(VENV)"

setup: $(VENV)/.installed

demo: setup
	@echo "== writing the synthetic category data/demo/demo"
	$(PY) -m utils.demo_data --root data/demo
	@echo "== training on it (configs/demo.yaml; about a minute on 2 CPU cores)"
	$(PY) train.py --config configs/demo.yaml
	@echo "== testing the model"
	$(PY) test.py --config configs/demo.yaml --save_dir output/demo/demo/test

test: setup
	$(PY) -m pytest -q -m "not slow" tests

test-all: setup
	$(PY) -m pytest -q tests

clean:
	rm -rf output logs data/demo
