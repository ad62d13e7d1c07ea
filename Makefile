# Two commands do everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test lint bench-consumer bench-expiry bench-notify bench-ens-sync bench-slo

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

# anvil (a local EVM for the ENS tests and benchmark) and solc-js, from npm
NODE_STAMP := node_modules/.installed-stamp
$(NODE_STAMP): package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $(NODE_STAMP)

demo: $(STAMP) $(NODE_STAMP)
	$(VENV)/bin/wal-consumer demo

test: $(STAMP) $(NODE_STAMP)
	$(PY) -m pytest
	$(MAKE) lint

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy wal_consumer job_handlers

bench-consumer: $(STAMP)
	$(PY) bench/consumer.py

bench-expiry: $(STAMP)
	$(PY) bench/expiry.py

bench-notify: $(STAMP)
	$(PY) bench/notify.py

bench-ens-sync: $(STAMP) $(NODE_STAMP)
	$(PY) bench/ens_sync.py

bench-slo: $(STAMP)
	$(PY) bench/slo.py
