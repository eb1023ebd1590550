# The two commands of the README. Each one sets up what it needs on a fresh machine.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP_RUN  := $(VENV)/.installed-run
STAMP_TEST := $(VENV)/.installed-test

.PHONY: demo test bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

$(STAMP_RUN): pyproject.toml | $(PY)
	$(PIP) install -q -c constraints.txt -e .
	touch $@

$(STAMP_TEST): pyproject.toml constraints.txt | $(PY)
	$(PIP) install -q -c constraints.txt -e '.[test,ray]'
	# zennit asks for torch and torchvision unpinned: install it alone, the constraints keep torch at the local CPU build
	$(PIP) install -q --no-deps zennit==0.5.1
	touch $@ $(STAMP_RUN)

demo: $(STAMP_RUN)
	$(VENV)/bin/onnxlrp demo

test: $(STAMP_TEST)
	$(PY) -m pytest -q -p no:cacheprovider

bench: $(STAMP_TEST)
	$(PY) benchmarks/compare.py

clean:
	rm -rf $(VENV) build *.egg-info onnxlrp-demo
