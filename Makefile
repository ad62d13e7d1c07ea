# Two commands do everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test lint bench-consumer bench-expiry

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/wal-consumer demo

test: $(STAMP)
	$(PY) -m pytest
	$(MAKE) lint

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy wal_consumer job_handlers

bench-consumer: $(STAMP)
	$(PY) bench/consumer.py

bench-expiry: $(STAMP)
	$(PY) bench/expiry.py
