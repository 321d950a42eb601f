# The two commands of the README, and their helpers. `demo` and `test` run `setup` first, so each works
# on a fresh machine on its own.
SHELL := /bin/bash
VENV  := .venv
BIN   := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: setup demo test test-unit test-integration test-e2e bench clean constraints down

setup:
	@bash deploy/setup.sh

demo: setup
	$(BIN)/liveml demo

test: setup
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-unit: setup
	$(BIN)/python -m pytest -m unit $(PYTEST_ARGS)

test-integration: setup
	$(BIN)/python -m pytest -m integration $(PYTEST_ARGS)

test-e2e: setup
	$(BIN)/python -m pytest -m e2e $(PYTEST_ARGS)

bench: setup
	$(BIN)/python bench/stack_startup.py
	$(BIN)/python bench/feature_pipeline.py
	$(BIN)/python bench/training_set.py
	$(BIN)/python bench/training.py
	$(BIN)/python bench/serving.py
	$(BIN)/python bench/enrichment.py

down:
	-@[ -x $(BIN)/liveml ] && $(BIN)/liveml down

constraints:
	@(echo "# Exact versions of the whole dependency closure, checked together on Python 3.11 / glibc 2.36."; \
	  echo "# Regenerate: make constraints (after changing requirements.in)."; \
	  $(BIN)/pip freeze --exclude-editable | grep -v '^liveml') > constraints.txt

clean: down
	rm -rf .liveml/catalog .liveml/warehouse .liveml/kafka .liveml/redis .liveml/flink .liveml/prometheus \
	       .liveml/logs .liveml/run .pytest_cache build *.egg-info
	find . -name __pycache__ -type d -prune -not -path './.venv/*' -exec rm -rf {} +
