# The two commands a new machine needs: `make demo` and `make test` (each installs first).
VENV  ?= .venv
PY    := $(VENV)/bin/python
# The CPU build of torch, installed before anything can ask for the multi-GB CUDA one: the default
# install needs no torch, but the test extra takes optimem[deepseek] (torch, transformers, safetensors)
# for the tiny DeepSeek-OCR 2 checkpoint the tests run on the CPU.
TORCH ?= torch==2.13.0

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[test]"
	@touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/optimem demo

serve: install
	$(VENV)/bin/optimem serve

test: install
	./tests/browser-deps
	@# pytest exits 5 when it collects nothing (e.g. a -k that matches no test): say so, don't fail
	$(PY) -m pytest -q -ra $(ARGS); s=$$?; if [ $$s -eq 5 ]; then echo "pytest: no tests collected"; exit 0; fi; exit $$s

bench: install
	$(PY) bench/run.py

# Layers (memory never imports api; model and renderer import neither), no import cycles, and a CPU
# path that never loads torch. Also run by `make test` (tests/test_packaging.py).
import-rules: install
	$(PY) tests/import_rules.py

.PHONY: install demo serve test bench import-rules
