# The two commands of a new user: `make demo` (install + the main job) and `make test`.
# Torch is installed first and pinned: an unpinned torch pulls a multi-GB CUDA build.

VENV ?= .venv
PY := $(VENV)/bin/python
TINYLENS := $(VENV)/bin/tinylens
WORKSPACE ?= runs

.PHONY: install demo test test-fast test-kernels wheel-check lint format bench docs clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

# The main job: the addition study on its defaults. It trains (or reuses) a 1-layer and a 2-layer
# model on 5-digit addition, measures the paper's claims and prints the path of report.html.
demo: install
	$(TINYLENS) study addition --preset quick --workspace $(WORKSPACE)

test: install
	HF_HUB_OFFLINE=1 $(PY) -m pytest

test-fast: install
	HF_HUB_OFFLINE=1 $(PY) -m pytest -m "not slow"

# The numerics-heavy tests again on another of ATen's CPU kernel paths (the scalar one by default;
# KERNEL=avx2 picks another), so that a tolerance tuned to this processor's kernels fails here first.
KERNEL ?= default
NUMERICS_TESTS = tests/analysis tests/test_model.py tests/test_train_forward.py tests/test_decoder.py \
	tests/studies/test_claims.py
test-kernels: install
	HF_HUB_OFFLINE=1 ATEN_CPU_CAPABILITY=$(KERNEL) $(PY) -m pytest -m "not slow" $(NUMERICS_TESTS)

# The package as users install it: a wheel in a fresh venv outside the checkout, then a tiny
# training, a tiny study and the explorer's pages from it.
wheel-check:
	bash .ci/wheel-check

lint: install
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

format: install
	$(VENV)/bin/ruff format src tests benchmarks
	$(VENV)/bin/ruff check --fix src tests benchmarks

bench: install
	$(PY) benchmarks/train_speed.py

# The API reference from the docstrings, offline, into build/docs/ (open build/docs/index.html).
# pdoc's warnings (an annotation it cannot evaluate, a module it cannot import) are errors here; it
# renders a reference it cannot resolve as plain text, so every reference is then checked.
DOC_MODULES = $(shell cd src && find tinylens/analysis -name '*.py' | sed 's|/__init__\.py$$||; s|\.py$$||; s|/|.|g' | sort)
# the study framework and the store: what a new study module and a sweep build on
DOC_MODULES += tinylens.studies tinylens.studies.framework tinylens.studies.claims tinylens.store
docs: install
	rm -rf build/docs
	HF_HUB_OFFLINE=1 $(PY) -W error -m pdoc --docformat google -o build/docs tinylens $(DOC_MODULES)
	$(PY) tests/analysis/test_docstring_refs.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
