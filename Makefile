# The front door. `make help` lists the targets.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
LOCK   := requirements-test.lock
# A new stamp (and so a fresh install) whenever pyproject.toml or the lock file changes.
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml $(LOCK) | sha1sum | cut -c1-12)

.DEFAULT_GOAL := help
.PHONY: help install compile lock run test unit integration soak lint typecheck bench clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

# Every package, the build backend included, comes from the lock file with its hashes checked; then the
# worker itself, editable, with nothing more.
$(STAMP): pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --require-hashes -r $(LOCK)
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	rm -f $(VENV)/.installed-* && touch $@

install: $(STAMP) ## create .venv and install the worker with its test tools (hash-checked from requirements-test.lock)

# The rules compiled with mypyc, beside their sources (README, "Compiled rules"); built again whenever one of them
# changes (the stamp names their digest). COMPILE=0 runs them interpreted: the extensions are removed.
COMPILE  ?= 1
COMPILED_SOURCES := $(addprefix worker/,$(shell sed -n 's/^    "\(.*\.py\)",$$/\1/p' worker/compiled.py))
COMPILED := $(VENV)/.compiled-$(COMPILE)-$(shell cat worker/compiled.py $(COMPILED_SOURCES) | sha1sum | cut -c1-12)
$(COMPILED): $(STAMP)
ifeq ($(COMPILE),0)
	$(PY) deploy/compile.py --clean
else
	$(PY) deploy/compile.py
endif
	rm -f $(VENV)/.compiled-* && touch $@

compile: $(COMPILED) ## build the rules with mypyc (a C compiler needed; COMPILE=0 removes them: interpreted)

LOCK_FLAGS := --quiet --generate-hashes --allow-unsafe --all-build-deps --strip-extras --no-emit-index-url --no-emit-find-links
lock: ## re-resolve requirements.lock (image) and requirements-test.lock (make) from pyproject.toml's pins, with hashes
	$(PYTHON) -m venv $(VENV)/lock-tools
	$(VENV)/lock-tools/bin/pip install --quiet pip-tools==7.6.2
	CUSTOM_COMPILE_COMMAND="make lock" $(VENV)/lock-tools/bin/pip-compile $(LOCK_FLAGS) \
		--output-file requirements.lock pyproject.toml
	CUSTOM_COMPILE_COMMAND="make lock" $(VENV)/lock-tools/bin/pip-compile $(LOCK_FLAGS) \
		--extra test --constraint requirements.lock --output-file $(LOCK) pyproject.toml

run: $(COMPILED) ## start Kafka, PostgreSQL and the worker, play a demo scenario; Ctrl-C stops everything
	$(PY) deploy/demo.py

# Two processes: the integration tests one after another in one (they share one broker and one server, and
# wait on them much of the time); the fault run (a broker and a server of its own) and the unit tests in the other.
test: lint typecheck $(COMPILED) ## lint, type-check, then every test against a real Kafka and PostgreSQL it starts
	$(PY) -m pytest -n 2

unit: $(COMPILED) ## only the tests that need no services
	$(PY) -m pytest tests/unit

integration: $(COMPILED) ## only the tests against real Kafka and PostgreSQL
	$(PY) -m pytest tests/integration

soak: $(COMPILED) ## the long fault run (10 minutes of faults) and fuzz run (100,000 hostile messages); prints figures
	BACKORDER_SOAK=1 $(PY) -m pytest -s tests/integration/test_fault_run.py tests/integration/test_fuzz_run.py

lint: $(STAMP) ## ruff lint and format check
	$(VENV)/bin/ruff check worker deploy tests
	$(VENV)/bin/ruff format --check worker deploy tests

typecheck: $(STAMP) ## mypy --strict on the worker package and its tests (a fake that drifts from its port fails)
	$(VENV)/bin/mypy

bench: $(COMPILED) ## the performance figures of issue 9 on a local stack with durable PostgreSQL (prints figures; about 5 min)
	$(PY) deploy/bench.py $(BENCH_ARGS)

clean: ## remove the virtualenv, caches and the compiled rules
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
	rm -f worker/compiled.txt worker/*.so worker/*/*.so
