#!/usr/bin/env bash
# `make bench`: release builds, Kafka up (scripts/with-kafka.sh), then each benchmark with its
# baseline in the same run. Prints markdown tables for the README.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
bin=${CARGO_TARGET_DIR:-$here/target}/release
run=$here/.run/bench
mkdir -p "$run"
pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

port=${BENCH_REGISTRY_PORT:-50151}
metrics=${BENCH_REGISTRY_METRICS_PORT:-9151}
topic="bench.models-$(date +%s)"
start_registry() {
  "$bin/kappa-registry" --listen "127.0.0.1:$port" --metrics-listen "127.0.0.1:$metrics" --models-topic "$topic" \
    --transactional-id "bench-$topic" --log warn >>"$run/registry.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 1 120); do
    curl -sf "http://127.0.0.1:$metrics/metrics" | grep -q '^kappa_registry_replay_seconds [0-9.e-]*[1-9]' && return
    sleep 0.5
  done
  echo "registry did not finish its replay; see $run/registry.log" >&2; exit 1
}

echo "## Registry: publish and get a 52 MiB model"
start_registry
"$bin/registry-bench" --registry "http://127.0.0.1:$port" throughput --iterations 3

echo
echo "## Registry: start-up replay with 1,000 versions in the topic"
"$bin/registry-bench" --registry "http://127.0.0.1:$port" fill --versions 1000
kill "${pids[-1]}"; wait "${pids[-1]}" 2>/dev/null || true
start_registry
replay=$(curl -s "http://127.0.0.1:$metrics/metrics" | awk '/^kappa_registry_replay_seconds/ {print $2}')
records=$(curl -s "http://127.0.0.1:$metrics/metrics" | awk '/^kappa_registry_log_position/ {print $2}')
echo "replayed $records records (1,000+ versions with chunks and markers) in ${replay} s"
