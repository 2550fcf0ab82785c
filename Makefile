# genflow: `make demo` and `make test` set everything up themselves.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: venv demo test bench clean

venv: $(STAMP)

# Re-installs only when pyproject.toml or constraints.txt changes; the package itself is
# editable. Versions are pinned by constraints.txt (users of `pip install -e .` get the ranges of
# pyproject.toml). A venv made before the distribution was renamed genflow -> genflow-jax has a
# stale `genflow` distribution: it is removed first (the import name stays `genflow`).
$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade -c constraints.txt pip
	@if $(BIN)/python -m pip show --quiet genflow >/dev/null 2>&1; then \
	  $(BIN)/python -m pip uninstall --quiet --yes genflow; fi
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[test]'
	@touch $(STAMP)

# Train the embedded default (VP diffusion on the 2-D checkerboard), then sample and plot.
demo: venv
	$(BIN)/genflow train --config configs/toy_checkerboard_vp.py --workdir runs/demo --fresh
	$(BIN)/genflow sample --workdir runs/demo

# One pytest worker per core; a test file stays on one worker, so its shared fixtures and
# compiled functions are built once.
test: venv
	$(BIN)/python -m pytest -q -n auto --dist loadfile tests

bench: venv
	$(BIN)/python scripts/bench_train.py

clean:
	rm -rf runs .pytest_cache
