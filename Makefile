# The two commands of the README: `make demo` and `make test`.
# Each sets up what it needs (virtualenv, pinned installs, packaged resources) and is
# idempotent: stamps make a second run reuse the virtualenv and the resources.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
CACHE  ?= cache

.PHONY: demo test venv resources clean-venv

venv: $(VENV)/.installed

$(VENV)/.installed: requirements.lock requirements-resources.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps -r requirements-resources.txt
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

resources: $(CACHE)/resources/.installed

$(CACHE)/resources/.installed: $(VENV)/.installed scripts/install_resources.sh
	bash scripts/install_resources.sh $(CACHE)/resources
	touch $@

test: venv resources
	$(BIN)/python -m pytest -q

demo: venv resources
	$(BIN)/draftsmith demo $(DEMO_ARGS)

clean-venv:
	rm -rf $(VENV)
