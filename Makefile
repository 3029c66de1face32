# Two commands that work on a fresh machine:
#   make demo  -> set up .venv and run the main job (a generation with MixCache on the bundled model)
#   make test  -> set up .venv and run the whole test suite
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# CPU path: torch is pinned first so no requirement can pull a multi-GB CUDA build.
TORCH_PIN := torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: setup test demo lint format bench clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH_PIN)
	$(BIN)/pip install -q $(TORCH_PIN) -e ".[dev,peers]"
	touch $(STAMP)

setup: $(STAMP)

test: $(STAMP)
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests
	$(BIN)/python -m pytest -n 2 -q

demo: $(STAMP)
	$(BIN)/mixcache generate "a red circle moving right" --cache balanced --out demo/mixcache.mp4 --compare

bench: $(STAMP)
	$(BIN)/mixcache bench --profile bundled --out bench-results

lint: $(STAMP)
	$(BIN)/ruff check src tests

format: $(STAMP)
	$(BIN)/ruff format src tests
	$(BIN)/ruff check --fix src tests

clean:
	rm -rf $(VENV) demo bench-results
