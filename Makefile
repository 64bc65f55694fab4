# Two commands on a fresh machine with only Python: `make demo`, `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
TFMOT_ORACLE := tf_keras==2.21.0 tensorflow-model-optimization==0.8.1
KERAS_HUB := keras-hub==0.32.0
TORCH := torch==2.13.0

.PHONY: demo test test-tf test-jax test-torch bazel-test install install-test bench lint clean

$(VENV)/.installed: setup.py
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q -e ".[tensorflow-cpu,demo]"
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed setup.py
	$(PIP) install -q -e ".[tensorflow-cpu,demo,test,jax,plots]" $(TORCH)
	# TFMOT is the reference the parity tests compare against. It pins the
	# full `tensorflow` build; tensorflow-cpu provides the same module.
	$(PIP) install -q --no-deps $(TFMOT_ORACLE)
	# KerasHub backbones are test models; its tensorflow-text dependency
	# (tokenizers only) would install the full `tensorflow` beside tensorflow-cpu.
	$(PIP) install -q --no-deps $(KERAS_HUB)
	touch $@

install: $(VENV)/.installed

install-test: $(VENV)/.installed-test

demo: $(VENV)/.installed
	$(PY) -m tfprune demo

# The whole suite, once per backend (separate processes). The TensorFlow and
# JAX passes spread over the CPUs (pytest-xdist: 2 workers make them 1.1-1.7x
# faster on 2 cores); the PyTorch pass is quicker than the workers' start-up.
XDIST ?= -n auto --maxprocesses 4
test: $(VENV)/.installed-test
	KERAS_BACKEND=tensorflow $(PY) -m pytest -q $(XDIST)
	KERAS_BACKEND=jax $(PY) -m pytest -q $(XDIST)
	KERAS_BACKEND=torch $(PY) -m pytest -q

test-tf test-jax test-torch: $(VENV)/.installed-test
	KERAS_BACKEND=$(subst test-,,$(subst tf,tensorflow,$@)) $(PY) -m pytest -q

# The suite under Bazel (BUILD, WORKSPACE): one target per test file, on
# TensorFlow, run by the virtual environment's Python; not part of `make test`.
# Bazel 4 comes from Debian's packages when missing. Other targets or flags:
# make bazel-test BAZEL_TEST_ARGS="--test_env=KERAS_BACKEND=jax //:test_api"
BAZEL_TEST_ARGS ?= //...

bazel-test: $(VENV)/.installed-test
	command -v bazel >/dev/null && test -d /usr/share/bazel/rules/java || \
		{ apt-get update -q && apt-get install -y -q bazel-bootstrap bazel-rules-java; }
	PATH="$(abspath $(VENV))/bin:$$PATH" bazel test $(BAZEL_TEST_ARGS)

bench: $(VENV)/.installed-test
	$(PY) bench/overhead.py
	$(PY) bench/mask_update.py
	$(PY) bench/memory.py
	$(PY) bench/criteria.py

lint: $(VENV)/.installed-test
	$(PIP) install -q -e ".[lint]"
	$(PY) -m ruff check tfprune tests bench

clean:
	rm -rf $(VENV) build *.egg-info
