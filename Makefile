# Two commands that work on a fresh machine:
#   make demo  -> set up .venv and run the main job (a generation with MixCache on the bundled model)
#   make test  -> set up .venv and run the whole test suite
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# CPU path: torch is pinned first, alone, and again in every install, so no requirement can pull
# a multi-GB CUDA build.
TORCH_PIN := torch==2.13.0
# What each target installs (README, "Install and extras"), always both distributions of this
# repository in one pip install, editable: the library (.) and mixcache-lab (./lab, the command
# line and the bundled models); bench adds the lab's metrics and cache-dit, test also the dev tools.
VENV_STAMP := $(VENV)/.created
CLI_STAMP := $(VENV)/.installed-cli
BENCH_STAMP := $(VENV)/.installed-bench
TEST_STAMP := $(VENV)/.installed-test

.PHONY: setup test demo lint format bench soak clean

$(VENV_STAMP):
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH_PIN)
	touch $@

PYPROJECTS := pyproject.toml lab/pyproject.toml

$(CLI_STAMP): $(PYPROJECTS) $(VENV_STAMP)
	$(BIN)/pip install -q $(TORCH_PIN) -e . -e ./lab
	touch $@

$(BENCH_STAMP): $(PYPROJECTS) $(VENV_STAMP)
	$(BIN)/pip install -q $(TORCH_PIN) -e . -e "./lab[bench,peers]"
	touch $@ $(CLI_STAMP)

$(TEST_STAMP): $(PYPROJECTS) $(VENV_STAMP)
	$(BIN)/pip install -q $(TORCH_PIN) -e . -e "./lab[dev,bench,peers]"
	touch $@ $(BENCH_STAMP) $(CLI_STAMP)

setup: $(TEST_STAMP)

# The context-parallel tests (marker "distributed") spawn two processes each: run serially.
test: $(TEST_STAMP)
	$(BIN)/ruff check src lab/src tests scripts
	$(BIN)/ruff format --check src lab/src tests scripts
	$(BIN)/python -m pytest -n 2 -q -m "not distributed"
	$(BIN)/python -m pytest -q -p no:xdist -m distributed

demo: $(CLI_STAMP)
	$(BIN)/mixcache generate "a red circle moving right" --cache balanced --out demo/mixcache.mp4 --compare

bench: $(BENCH_STAMP)
	$(BIN)/mixcache bench --profile bundled --out bench-results

# 100 generations in one process, each bit-identical to a fresh run (the fast part is in `test`).
soak: $(TEST_STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python -m mixcache_lab.soak --generations 100

lint: $(TEST_STAMP)
	$(BIN)/ruff check src lab/src tests scripts

format: $(TEST_STAMP)
	$(BIN)/ruff format src lab/src tests
	$(BIN)/ruff check --fix src lab/src tests

clean:
	rm -rf $(VENV) demo bench-results
