# Every target creates the virtual environment it needs, so a fresh clone needs only `make demo` or `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION = 20

.PHONY: demo test test-integration test-rest lint types unit emulator integration infra e2e smoke synth bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/batchdrop demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

types: $(STAMP)
	$(BIN)/mypy

# One target per test tier (markers given in tests/conftest.py by folder); `make test` runs them all.
unit: $(STAMP)
	$(BIN)/pytest -q -m unit tests/unit

emulator: $(STAMP)
	$(BIN)/pytest -q -m emulator tests/integration

integration: $(STAMP)
	$(BIN)/pytest -q -m integration tests/integration

infra: $(STAMP)
	$(BIN)/pytest -q -m infra tests/infra

e2e: $(STAMP)
	$(BIN)/pytest -q -m e2e tests/e2e

# A deployed stack with real providers (README, "Smoke test a deployment"): `make smoke STACK=MyStack LANE=realtime`.
# It deploys nothing, and skips with a reason where there are no credentials or no such stack.
STACK ?= $(or $(BATCHDROP_STACK),Batchdrop)
LANE ?=
SMOKE_TIMEOUT ?= 7200

smoke: $(STAMP)
	$(BIN)/pytest -q -s -rs -m smoke tests/smoke --stack '$(STACK)' --smoke-timeout $(SMOKE_TIMEOUT) $(if $(LANE),--lane $(LANE))

# The whole suite as two processes at once: most integration tests wait on a provider's clock or a
# queue, which left the second core idle (one process: 22 min on a 2-core CI machine). Each half has
# its own moto server and emulators (tests/helpers.py), and make prints each half's output whole.
test: lint types
	$(MAKE) --no-print-directory -j2 -Otarget test-integration test-rest

test-integration: $(STAMP)
	$(BIN)/pytest -q -p no:cacheprovider tests/integration

test-rest: $(STAMP)
	$(BIN)/pytest -q -p no:cacheprovider tests/e2e tests/infra tests/unit tests/smoke

synth: $(STAMP)
	$(BIN)/python -c "import infra.app as a; a.main()"

bench: $(STAMP)
	$(BIN)/python -m benchmarks

clean:
	rm -rf $(VENV) cdk.out .pytest_cache .mypy_cache .ruff_cache
