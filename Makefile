# The two commands of the README. Each one sets up what it needs on a fresh machine.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP_RUN  := $(VENV)/.installed-run
STAMP_TEST := $(VENV)/.installed-test

.PHONY: demo test bench clean js-install browser-install web-demo

# The JavaScript examples (examples/node, examples/web) and the browser that tests the page. Each step is skipped,
# with a line saying so, where the machine lacks npm or apt-get; the tests that need it then skip with the reason.
NODE_DEPS := examples/node/node_modules/.package-lock.json
WEB_DEPS  := examples/web/node_modules/.package-lock.json
NPM_CI    := npm ci --no-audit --no-fund --loglevel=error >/dev/null
BROWSER   := /usr/bin/chromium /usr/bin/chromedriver

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

$(STAMP_RUN): pyproject.toml | $(PY)
	$(PIP) install -q -c constraints.txt -e .
	touch $@

# onnxruntime-node's install script would fetch CUDA files from outside the npm registry: skipped (CPU only)
$(NODE_DEPS): examples/node/package-lock.json
	@if command -v npm >/dev/null; then cd examples/node && ONNXRUNTIME_NODE_INSTALL_CUDA=skip $(NPM_CI); \
	else echo "npm not found: the Node.js example's test will be skipped"; fi

$(WEB_DEPS): examples/web/package-lock.json
	@if command -v npm >/dev/null; then cd examples/web && $(NPM_CI); \
	else echo "npm not found: the web page's tests will be skipped"; fi

js-install: $(NODE_DEPS) $(WEB_DEPS)
	@:

# Debian's chromium + chromium-driver for the headless browser test, installed once when missing (root only)
browser-install:
	@for f in $(BROWSER); do [ -x $$f ] || missing=1; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then \
	    echo "chromium/chromium-driver missing and apt-get not usable here: the browser test will be skipped"; \
	  else \
	    echo "installing chromium and chromium-driver (apt-get) for the browser test"; \
	    export DEBIAN_FRONTEND=noninteractive; \
	    apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null 2>&1 || \
	    { apt-get update -qq >/dev/null 2>&1 && \
	      apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null 2>&1; } || \
	    echo "apt-get could not install chromium: the browser test will be skipped"; \
	  fi; \
	fi

$(STAMP_TEST): pyproject.toml constraints.txt | $(PY)
	$(PIP) install -q -c constraints.txt -e '.[test,ray]'
	# zennit asks for torch and torchvision unpinned: install it alone, the constraints keep torch at the local CPU build
	$(PIP) install -q --no-deps zennit==0.5.1
	# quantus asks for torch, torchvision and opencv-python: install it alone (the test extras bring what it imports)
	$(PIP) install -q --no-deps quantus==0.6.0
	# models as deployed (tests/test_deployed_models.py): the ONNX files these wheels ship, without their runtimes
	$(PIP) install -q --no-deps rapidocr-onnxruntime==1.4.4 nudenet==3.4.2
	# lxt and timm ask for torch and torchvision unpinned (lxt also for bitsandbytes, open_clip...): install them
	# alone, the constraints keep torch at the local CPU build; tests/conftest.py stands in for torchvision
	$(PIP) install -q --no-deps lxt==2.1 timm==1.0.31
	touch $@ $(STAMP_RUN)

demo: $(STAMP_RUN)
	$(VENV)/bin/onnxlrp demo

test: $(STAMP_TEST) js-install browser-install
	$(PY) -m pytest -q -p no:cacheprovider

web-demo: $(STAMP_RUN) $(WEB_DEPS)
	$(VENV)/bin/onnxlrp web-demo

bench: $(STAMP_TEST)
	$(PY) benchmarks/compare.py

clean:
	rm -rf $(VENV) build *.egg-info onnxlrp-demo examples/node/node_modules examples/web/node_modules
