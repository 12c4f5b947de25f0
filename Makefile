# `make demo`: install, make the synthetic data, train a few epochs, test. `make test`: the tests.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup demo test clean

$(VENV)/.installed: requirements.txt requirements-dev.txt requirements-extras.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(PY) -m utils.demo_data --root data/demo
	$(PY) train.py --config configs/demo.yaml
	$(PY) test.py --config configs/demo.yaml --save_dir output/demo/demo/test

test: setup
	$(PY) -m pytest -q tests

clean:
	rm -rf output logs data/demo
