# The two set-up-free commands: `make demo` and `make test`.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-long test-gpu lint bench science clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	# torch is pinned (torch==2.13.0 in pyproject.toml) so that nothing resolves a newer build.
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	@touch $(STAMP)

test: $(STAMP)
	$(BIN)/ruff check tagtune tests bench
	$(BIN)/lint-imports  # the import contracts of pyproject.toml (docs/architecture.md)
	$(BIN)/python -m pytest -q -m "not slow and not cluster and not long" -p no:cacheprovider

# The second tier, which CI runs too (.ci/run): kill-and-resume and lost-server scenarios
# (marker cluster), every UI ending, the study extensions and the bench smoke runs (marker long).
test-long: $(STAMP)
	$(BIN)/python -m pytest -q -m "(cluster or long) and not slow" -p no:cacheprovider

# The GPU tests (tests/gpu) on a GPU node, which has no venv and no internet: installs nothing, runs
# with the venv's python where there is one, else python3. TAGTUNE_GPU_TESTS_ON=cpu: a dry run here.
test-gpu:
	$(if $(wildcard $(BIN)/python),$(BIN)/python,python3) -m pytest -q -m gpu tests/gpu -p no:cacheprovider

demo: $(STAMP)
	$(BIN)/python -m tagtune.launch.demo

lint: $(STAMP)
	$(BIN)/ruff check tagtune tests bench
	$(BIN)/lint-imports

# Whole-process timings, ratios against a baseline measured in the same run (quiet machine!).
bench: $(STAMP)
	$(BIN)/python bench/bench_load.py
	$(BIN)/python bench/bench_speed.py
	$(BIN)/python bench/bench_study.py

# The paper's comparison, B0/B1/LE/MT on openmic-like and sonyc-like data, before / paper / default
# setups (bench/science_check.py): ~2.6 h on 2 quiet cores (120 runs, 5.3 core-hours; --estimate).
science: $(STAMP)
	$(BIN)/python bench/science_check.py

clean:
	rm -rf $(VENV) demo-out .pytest_cache
