# Kappa: the two commands a newcomer needs are `make demo` and `make test`.
SHELL := /usr/bin/env bash
.DEFAULT_GOAL := help

# Builds are cached outside the clone so a fresh clone reuses them; nothing depends on the cache.
export CARGO_TARGET_DIR ?= $(HOME)/.cache/kappa/target
export CARGO_TERM_COLOR ?= never
KAFKA := deploy/kafka/kafka.sh
TOOLS_BIN := $(HOME)/.cache/kappa/bin
PY := $(HOME)/.cache/kappa/py/bin/python
VENV_BIN := $(HOME)/.cache/kappa/py/bin
# The worked notebook's venv, with PyTorch (examples/notebook).
NOTEBOOK_PY := $(HOME)/.cache/kappa/notebook-venv/bin/python
WITH_KAFKA := scripts/with-kafka.sh

.PHONY: python-test python-docs helm-test help prerequisites build test lint fmt demo bench kafka-up kafka-down kafka-secure-up kafka-secure-down kafka-cluster-up kafka-cluster-down mqtt-up mqtt-down soak kafka-logs kafka-reset jaeger-up jaeger-down clean

help: ## Show the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

prerequisites: ## Check the tools the build needs are installed
	@command -v cargo >/dev/null || { echo "Rust is required: install it with rustup (https://rustup.rs) and retry." >&2; exit 1; }
	@command -v java >/dev/null || { echo "Java 17+ is required to run the local Kafka: install a JDK and retry." >&2; exit 1; }
	@command -v mvn >/dev/null || { echo "Maven is required to fetch Kafka from Maven Central: install it and retry." >&2; exit 1; }
	@command -v go >/dev/null || { echo "Go is required to build Jaeger, grpcurl and helm: install Go and retry." >&2; exit 1; }
	@command -v python3 >/dev/null || { echo "Python 3 is required for the tests' venv (scripts/tools.sh): install it and retry." >&2; exit 1; }
	@command -v cc >/dev/null && command -v make >/dev/null || { echo "A C compiler and make are required to build librdkafka." >&2; exit 1; }

build: prerequisites ## Build every binary (kappa, kappa-registry, ...)
	cargo build --workspace --bins

test: prerequisites ## Run all tests against a real Kafka broker (started and stopped here if needed)
	scripts/tools.sh >/dev/null
	cargo build --workspace --bins --tests
	deploy/jaeger/jaeger.sh build >/dev/null
	$(WITH_KAFKA) --jaeger --secure --cluster --mqtt cargo test --workspace -- --test-threads 4
	$(MAKE) --no-print-directory python-test
	$(MAKE) --no-print-directory helm-test

python-test: ## The Python package (python/): installed into the test venv from its pyproject, tested against real services
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null || [ -n "$$KAPPA_CHROMIUM" ] || { echo "Chromium is required for the console's page tests: apt install chromium (or set KAPPA_CHROMIUM) and retry." >&2; exit 1; }
	scripts/tools.sh >/dev/null
	cargo build --workspace --bins
	$(PY) -m pip install -q ./python
	$(NOTEBOOK_PY) -m pip install -q ./python
	KAPPA_BIN_DIR=$(CARGO_TARGET_DIR)/debug $(WITH_KAFKA) $(PY) -m pytest -q python/tests

python-docs: ## The Python package's API reference from its docstrings (pdoc) into python/build/api/
	scripts/tools.sh >/dev/null
	$(PY) -m pip install -q ./python
	$(PY) -m pdoc --docformat restructuredtext -o python/build/api kappa
	@echo "open python/build/api/index.html"

helm-test: ## Helm chart: lint --strict, offline Kubernetes schema validation, --check-config of the rendered pods, promtool on its alerts
	scripts/tools.sh >/dev/null
	cargo build --workspace --bins
	KAPPA_BIN_DIR=$(CARGO_TARGET_DIR)/debug KAPPA_HELM=$(TOOLS_BIN)/helm KAPPA_PROMTOOL=$(TOOLS_BIN)/promtool $(PY) -m pytest -q tests/helm

lint: ## cargo fmt --check, clippy with warnings as errors, cargo deny (licences, duplicate majors, sources, advisories)
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings
	scripts/tools.sh --lint >/dev/null
	cd python && $(VENV_BIN)/ruff check . && $(VENV_BIN)/ruff format --check .
	$(VENV_BIN)/ruff check --config python/pyproject.toml examples/notebook && $(VENV_BIN)/ruff format --check --config python/pyproject.toml examples/notebook
	$(TOOLS_BIN)/cargo-deny check licenses bans sources
	scripts/advisories.sh $(TOOLS_BIN)/cargo-deny

fmt: ## Format the code
	cargo fmt --all

demo: build ## The whole loop: Kafka, MQTT + Jaeger; bridge, registry, 2 predictors, trainer; cars over MQTT, train, promote, retrain, swap
	deploy/jaeger/jaeger.sh build >/dev/null
	$(WITH_KAFKA) --jaeger --mqtt scripts/demo.sh

jaeger-up: ## Build (once) and start a local Jaeger all-in-one: UI/API :16686, OTLP gRPC :4317
	deploy/jaeger/jaeger.sh up

jaeger-down: ## Stop the local Jaeger started by jaeger-up
	deploy/jaeger/jaeger.sh down

kafka-secure-up: ## Start the secure local broker (SASL/SCRAM over TLS, ACLs per service) on 127.0.0.1:9094
	KAFKA_MODE=secure $(KAFKA) up

kafka-secure-down: ## Stop the secure local broker
	KAFKA_MODE=secure $(KAFKA) down

kafka-cluster-up: ## Start the local three-node Kafka cluster (replication 3, min.insync.replicas=2) on 127.0.0.1:9192-9194
	deploy/kafka/cluster.sh up

kafka-cluster-down: ## Stop the local three-node Kafka cluster
	deploy/kafka/cluster.sh down

mqtt-up: ## Fetch (once) and start the local MQTT broker (HiveMQ CE, MQTT 3 and 5) on 127.0.0.1:1883, TLS with passwords on :8883
	deploy/mqtt/mqtt.sh up

mqtt-down: ## Stop the local MQTT broker started by mqtt-up
	deploy/mqtt/mqtt.sh down

kafka-up: ## Fetch (once) and start the local single-node Kafka on 127.0.0.1:9092
	$(KAFKA) up

kafka-down: ## Stop the local Kafka started by kafka-up
	$(KAFKA) down

kafka-logs: ## Follow the local Kafka's log
	$(KAFKA) logs

kafka-reset: ## Stop the local Kafka and delete its data
	$(KAFKA) reset

clean: ## Remove build output
	cargo clean

soak: prerequisites ## Ten minutes of load, publishes, stream scoring, broker restarts and kill -9s on a broker of its own (not in CI)
	cargo build --release --workspace --bins
	cargo run --release -q -p kappa-bench --bin soak -- --minutes $${SOAK_MINUTES:-10}

bench: prerequisites ## Benchmarks with same-run baselines (release build; prints markdown tables)
	cargo build --release --workspace --bins
	deploy/jaeger/jaeger.sh build >/dev/null
	$(WITH_KAFKA) --jaeger --mqtt scripts/bench.sh
