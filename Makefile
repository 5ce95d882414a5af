# The two commands of the README: `make demo` and `make test`.
# Each sets up what it needs (virtualenv, pinned installs, packaged resources) and is
# idempotent: stamps make a second run reuse the virtualenv and the resources.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
CACHE  ?= cache

.PHONY: demo test venv resources clean-venv compat gpu-carry

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
	rm -rf $(VENV) $(OLDEST_VENV)

# The oldest supported pair (pyproject.toml): transformers $(OLDEST_TRANSFORMERS) in its own virtualenv,
# with the lock's other pins (huggingface_hub and tokenizers resolved for that transformers) and the
# newest torch this machine has a wheel for; runs the suite's transformers-facing subset.
OLDEST_TRANSFORMERS ?= 5.18.0
OLDEST_VENV ?= .venv-oldest
COMPAT_TESTS ?= tests/test_eval.py tests/test_target.py tests/test_draft_model.py tests/test_export.py \
	tests/test_dtype_policy.py tests/test_engine_conventions.py tests/test_families.py tests/test_templates.py \
	tests/test_packaging.py tests/test_layouts.py

$(OLDEST_VENV)/.installed: requirements.lock requirements-resources.txt pyproject.toml Makefile
	test -x $(OLDEST_VENV)/bin/python || $(PYTHON) -m venv $(OLDEST_VENV)
	grep -vE '^(transformers|huggingface_hub|tokenizers)==' requirements.lock > $(OLDEST_VENV)/requirements.txt
	echo "transformers==$(OLDEST_TRANSFORMERS)" >> $(OLDEST_VENV)/requirements.txt
	$(OLDEST_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(OLDEST_VENV)/bin/python -m pip install --quiet -r $(OLDEST_VENV)/requirements.txt
	$(OLDEST_VENV)/bin/python -m pip install --quiet --no-deps -r requirements-resources.txt
	$(OLDEST_VENV)/bin/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

compat: resources $(OLDEST_VENV)/.installed
	$(OLDEST_VENV)/bin/python -c "import torch, transformers; print('compat: torch', torch.__version__, '+ transformers', transformers.__version__)"
	OMP_NUM_THREADS=1 $(OLDEST_VENV)/bin/python -m pytest -q $(COMPAT_TESTS)

# What the GPU machine lacks (no package index there): cp312 wheels of datasets, gguf, accelerate,
# pytest and their small dependencies, the MT-bench questions, and the demo's draft when one was
# trained here (cache/demo/default/draft). Carry bench/gpu/carry with the checkout (<= 64 MiB);
# the SmolLM2 GGUF (94 MiB) does not fit one carry: `make gpu-carry-model` splits it in two.
GPU_WHEELS := transformers==5.18.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 xxhash==4.1.0 fsspec==2026.9.0 \
	huggingface_hub==1.33.0 gguf==0.19.0 accelerate==1.15.0 psutil==7.2.2 \
	pytest==9.2.0 iniconfig==2.3.1 pluggy==1.7.0 Pygments==2.21.0
gpu-carry: venv resources
	rm -rf bench/gpu/carry && mkdir -p bench/gpu/carry/wheels
	$(BIN)/python -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
		--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
		-d bench/gpu/carry/wheels $(GPU_WHEELS)
	cp "$$($(BIN)/python -c 'from draftsmith import resources; print(resources.mtbench_questions())')" \
		bench/gpu/carry/mt_bench.jsonl
	if [ -f $(CACHE)/demo/default/draft/config.json ]; then cp -r $(CACHE)/demo/default/draft bench/gpu/carry/draft; fi
	du -sh bench/gpu/carry

gpu-carry-model: venv
	rm -rf bench/gpu/carry-model && mkdir -p bench/gpu/carry-model
	split -b 48m "$$($(BIN)/python -c 'from draftsmith import resources; print(resources.smollm2_gguf())')" \
		bench/gpu/carry-model/smollm2.gguf.part-
	mv bench/gpu/carry-model/smollm2.gguf.part-ab bench/gpu/carry/
