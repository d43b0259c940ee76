# `make run` starts the service on its embedded defaults; `make test` runs every test;
# `make bench` measures it against the reference Node server.
# Each creates .venv and installs what it needs on first use (`make run`: the service's
# requirements only; the others also the test tools and the Node packages).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
RUNTIME := $(VENV)/.runtime

.PHONY: run test lint install bench

$(STAMP): requirements.txt requirements-dev.txt package.json package-lock.json \
		bench/requirements.txt bench/package.json bench/package-lock.json
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements-dev.txt -r bench/requirements.txt
	npm ci --no-audit --no-fund --loglevel=error
	npm ci --prefix bench --no-audit --no-fund --loglevel=error
	touch $(STAMP)

# What `make run` needs: the service's own requirements only (no Node, no test tools).
$(RUNTIME): requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.txt
	touch $(RUNTIME)

install: $(STAMP)

run: $(RUNTIME)
	$(BIN)/python apps/api/main.py

# Everything on the service's transport, then the WebSocket and JavaScript-client suites again on
# plain python-socketio (WEBSOCKET_TRANSPORT=stock: what it gets wrong is an expected failure).
test: $(STAMP)
	$(BIN)/pytest
	WEBSOCKET_TRANSPORT=stock $(BIN)/pytest apps/api/websocket/tests.py apps/api/tests/test_js_client.py

# The benchmark against the reference Node server (about 8-9 minutes; see bench/README.md).
bench: $(STAMP)
	$(BIN)/python bench/run.py

lint: $(STAMP)
	$(BIN)/ruff check apps bench
	$(BIN)/ruff format --check apps bench
	$(BIN)/mypy apps
	$(BIN)/lint-imports --no-cache
