# cancelflow: `make run` starts everything, `make test` runs the whole suite.
SHELL := /bin/bash
VENV ?= .venv
PYTHON ?= $(shell command -v python3.11 || command -v python3)
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell sha1sum pyproject.toml | cut -c1-12)

.PHONY: install run test lint bytecode typecheck typecheck-idle pytest pytest-xdist pytest-schema pytest-rabbitmq bench load demo clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "cancelflow needs Python 3.11, found " + sys.version' 
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@rm -f $(VENV)/.installed-* && touch $@

install: $(STAMP)

run: install  ## start API, worker, beat, Flower and the sandboxes (embedded PostgreSQL/Redis unless configured)
	$(VENV)/bin/cancelflow run

# mypy runs beside the xdist run at the lowest priority: it takes only the CPU the tests leave idle while they
# wait on their processes (about a sixth of it). Then the schemathesis tests (mostly CPU) and the RabbitMQ run
# (mostly waiting on its stack) share the two cores, each one's output printed whole when it ends. The xdist run's
# progress is printed as it goes (mypy's few lines may land between its dots).
test: install lint bytecode  ## the whole suite: lint, types, tests (Redis, then RabbitMQ)
	$(MAKE) --no-print-directory -j2 pytest-xdist typecheck-idle
	$(MAKE) --no-print-directory -j2 --output-sync=target pytest-schema pytest-rabbitmq

lint: install
	$(VENV)/bin/ruff check cancelflow tests bench migrations
	$(VENV)/bin/ruff format --check cancelflow tests bench migrations

# The tests write bytecode even where PYTHONDONTWRITEBYTECODE is set (CI's machine sets it). With it, each of the
# few hundred processes the tests start compiled cancelflow from source again (~0.25 s of CPU apiece), and every
# pytest process parsed and assertion-rewrote all the test files again (collection: 17 s of CPU instead of 8).
# The package is compiled once before the run; pytest keeps its rewritten test modules in __pycache__ as usual.
bytecode pytest-xdist pytest-schema pytest-rabbitmq: export PYTHONDONTWRITEBYTECODE :=

bytecode: install
	$(PY) -m compileall -q cancelflow tests bench migrations

typecheck: install
	$(VENV)/bin/mypy

typecheck-idle: install
	nice -n 19 $(VENV)/bin/mypy

pytest: pytest-xdist pytest-schema

# Two workers (pytest-xdist), a test file whole to each: most of a file's time is spent waiting on its processes.
# The 25 slowest tests are printed at the end: the suite must stay within CI's 15 minutes.
pytest-xdist: install
	$(PY) -m pytest -n 2 -m "not schema_fuzz" --durations=25

# The schemathesis tests, generated per API operation, on a database of their own (a few rows with low ids that
# generated ids can hit); two workers share the operations.
pytest-schema: install
	$(PY) -m pytest -n 2 -m schema_fuzz tests/api

# The end-to-end flows once more on RabbitMQ (quorum queues); they skip with a hint when 5672 is closed.
pytest-rabbitmq: install
	CANCELFLOW_TEST_BROKER=amqp $(PY) -m pytest tests/workflow/test_e2e.py tests/workflow/test_intake.py -p no:cacheprovider

bench: install  ## benchmarks: print figures and ratios (not part of the tests)
	$(PY) bench/workflow.py
	$(PY) bench/api.py

# A storefront burst over HTTP (locust, 50 users for 60 s) against the stack `make run` starts; prints figures.
load: install
	$(PY) bench/load.py

demo: install
	$(VENV)/bin/cancelflow demo

clean:
	rm -rf $(VENV) .cancelflow test-output .pytest_cache .mypy_cache .ruff_cache
