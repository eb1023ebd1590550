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
	$(PIP) install -q -c constraints.txt -e '.[test]'
	# zennit, lxt and timm ask for torch and torchvision unpinned (lxt also for bitsandbytes, open_clip...): install them
	# alone, the constraints keep torch at the local CPU build; tests/conftest.py stands in for torchvision
	$(PIP) install -q --no-deps zennit==0.5.1 lxt==2.1 timm==1.0.31
	touch $@ $(STAMP_RUN)

demo: $(STAMP_RUN)
	$(VENV)/bin/onnxlrp demo

test: $(STAMP_TEST)
	$(PY) -m pytest -q -p no:cacheprovider

bench: $(STAMP_TEST)
	$(PY) benchmarks/compare.py

clean:
	rm -rf $(VENV) build *.egg-info onnxlrp-demo
