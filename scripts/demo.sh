#!/usr/bin/env bash
# The demo behind `make demo` (Kafka is already up: see scripts/with-kafka.sh). Starts
# kappa-registry, publishes two versions of an example model, lists them, moves an alias,
# reads the model back through the alias, replays the log, and stops what it started.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
bin=${CARGO_TARGET_DIR:-$here/target}/debug
run=$here/.run/demo
mkdir -p "$run"

registry_port=${DEMO_REGISTRY_PORT:-50051}
metrics_port=${DEMO_REGISTRY_METRICS_PORT:-9101}
export KAPPA_REGISTRY=http://127.0.0.1:$registry_port
kappa() { "$bin/kappa" "$@"; }
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

step "Starting kappa-registry on 127.0.0.1:$registry_port (log: .run/demo/registry.log)"
"$bin/kappa-registry" --listen "127.0.0.1:$registry_port" --metrics-listen "127.0.0.1:$metrics_port" \
  >"$run/registry.log" 2>&1 &
pids+=($!)
for i in $(seq 1 60); do
  kappa models list >/dev/null 2>&1 && break
  kill -0 "${pids[0]}" 2>/dev/null || { cat "$run/registry.log"; echo "kappa-registry exited; see above." >&2; exit 1; }
  [ "$i" = 60 ] && { echo "kappa-registry did not become ready in 60 s; see $run/registry.log" >&2; exit 1; }
  sleep 1
done
grep -E "replayed|listening" "$run/registry.log" | sed -E 's/\x1b\[[0-9;]*m//g' | sed 's/^/   /'

step "Writing an example autoencoder over the 18 car sensor fields"
kappa models example --out "$run/v1" --name car-anomaly --seed 1
kappa models example --out "$run/v2" --name car-anomaly --seed 2 >/dev/null

step "Publishing two versions (the registry validates, hashes and writes each in one Kafka transaction)"
kappa models publish "$run/v1/weights.safetensors" "$run/v1/manifest.json"
kappa models publish "$run/v2/weights.safetensors" "$run/v2/manifest.json"
echo "   publishing v1 again is idempotent:"
kappa models publish "$run/v1/weights.safetensors" "$run/v1/manifest.json" | sed 's/^/   /'

latest=$(kappa models list --output json | python3 -c 'import json,sys; print(next(m["latestVersion"] for m in json.load(sys.stdin)["models"] if m["name"]=="car-anomaly"))')
previous=$((latest - 1))

step "Listing models and versions"
kappa models list
kappa models versions car-anomaly | tail -n 3

step "Pointing alias 'production' at v$previous, then moving it to v$latest"
kappa models alias car-anomaly production "$previous"
kappa models alias car-anomaly production "$latest"

step "Reading the model back through the alias"
kappa models get car-anomaly --alias production --out "$run/production.safetensors"
if cmp -s "$run/production.safetensors" "$run/v2/weights.safetensors"; then
  echo "   the bytes read back are identical to the v2 file that was published"
else
  echo "   the bytes read back differ from the published file" >&2; exit 1
fi

step "The log itself: the last events in kappa.models, in order"
"$bin/kappa" models watch --name car-anomaly --from 0 --limit 200 >"$run/events.txt" 2>/dev/null &
watch_pid=$!
sleep 3; kill "$watch_pid" 2>/dev/null || true; wait "$watch_pid" 2>/dev/null || true
tail -n 6 "$run/events.txt"

step "Where to look next"
cat <<TXT
   grpcurl -plaintext 127.0.0.1:$registry_port list
   grpcurl -plaintext -d '{"name":"car-anomaly","alias":"production","manifestOnly":true}' \\
     127.0.0.1:$registry_port kappa.registry.v1.Registry/GetModel
   curl -s http://127.0.0.1:$metrics_port/metrics | grep kappa_registry
   (the registry stops when this demo ends; start it yourself with $bin/kappa-registry)
TXT
curl -s "http://127.0.0.1:$metrics_port/metrics" | grep -E '^kappa_registry_(publishes_total|log_position|replay_seconds)' | sed 's/^/   /' || true
echo
echo "Demo finished: model published, listed, aliased and read back from Kafka."
