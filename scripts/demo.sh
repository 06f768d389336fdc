#!/usr/bin/env bash
# The demo behind `make demo` (Kafka is already up: see scripts/with-kafka.sh). Starts
# kappa-registry, publishes two versions of an example model, lists them, moves an alias, reads
# the model back, starts kappa-predictor following the alias, scores the demo's CSV, moves the
# alias again and shows the predictor swap under load, then stops what it started.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
bin=${CARGO_TARGET_DIR:-$here/target}/debug
run=$here/.run/demo
mkdir -p "$run"

registry_port=${DEMO_REGISTRY_PORT:-50051}
metrics_port=${DEMO_REGISTRY_METRICS_PORT:-9101}
predictor_port=${DEMO_PREDICTOR_PORT:-50052}
predictor_metrics=${DEMO_PREDICTOR_METRICS_PORT:-9102}
data=${DEMO_DATA:-$here/../shared/data/car-sensor-data.csv}
export KAPPA_REGISTRY=http://127.0.0.1:$registry_port
export KAPPA_PREDICTOR=http://127.0.0.1:$predictor_port
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
scale=()
[ -f "$data" ] && scale=(--scale-from "$data") && echo "   (feature scaling fitted on $(basename "$data"))"
kappa models example --out "$run/v1" --name car-anomaly --seed 1 "${scale[@]}"
kappa models example --out "$run/v2" --name car-anomaly --seed 2 "${scale[@]}" >/dev/null

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

step "Starting kappa-predictor following car-anomaly@production (reads the model from Kafka)"
"$bin/kappa-predictor" --listen "127.0.0.1:$predictor_port" --metrics-listen "127.0.0.1:$predictor_metrics" \
  --model car-anomaly --follow production >"$run/predictor.log" 2>&1 &
pids+=($!)
for i in $(seq 1 60); do
  curl -sf "http://127.0.0.1:$predictor_metrics/metrics" | grep -q '^kappa_predictor_model_ready 1' && break
  [ "$i" = 60 ] && { tail -20 "$run/predictor.log"; echo "kappa-predictor did not load a model in 60 s" >&2; exit 1; }
  sleep 0.5
done
grep -E "now serving" "$run/predictor.log" | sed -E 's/\x1b\[[0-9;]*m//g' | sed 's/^/   /'

if [ -f "$data" ]; then
  step "Scoring the first 500 rows of $(basename "$data") (real, messy data) through the typed gRPC API"
  head -n 501 "$data" > "$run/sample.csv"
  "$bin/kappa" predict "$run/sample.csv" 2>"$run/predict-summary.txt" | head -n 5
  echo "   ..."
  sed 's/^/   /' "$run/predict-summary.txt"
fi

step "Moving production back to v$previous while a client keeps calling: the predictor swaps without a failed request"
"$bin/kappa" predict "$run/sample.csv" >"$run/under-swap.txt" 2>"$run/under-swap-summary.txt" &
load_pid=$!
sleep 0.2
kappa models alias car-anomaly production "$previous"
wait "$load_pid" || true
sed 's/^/   load during the swap: /' "$run/under-swap-summary.txt"
for _ in $(seq 1 40); do
  served=$(curl -s "http://127.0.0.1:$predictor_metrics/metrics" | awk '/^kappa_predictor_loaded_version/ {print $2}')
  [ "$served" = "$previous" ] && break
  sleep 0.05
done
echo "   predictor now serves version $served; versions seen by the client: $(awk '{print $NF}' "$run/under-swap.txt" | sort | uniq -c | tr -s ' ' | tr '\n' ' ')"
curl -s "http://127.0.0.1:$predictor_metrics/metrics" | grep -E '^kappa_predictor_(swaps_total|loaded_version|load_failures)' | sed 's/^/   /'

step "Where to look next"
cat <<TXT
   grpcurl -plaintext 127.0.0.1:$registry_port list
   grpcurl -plaintext -d '{"name":"car-anomaly","alias":"production","manifestOnly":true}' \\
     127.0.0.1:$registry_port kappa.registry.v1.Registry/GetModel
   grpcurl -plaintext 127.0.0.1:$predictor_port list
   grpcurl -plaintext -d '{"model_name":"car-anomaly"}' 127.0.0.1:$predictor_port inference.GRPCInferenceService/ModelMetadata
   curl -s http://127.0.0.1:$metrics_port/metrics | grep kappa_registry
   curl -s http://127.0.0.1:$predictor_metrics/metrics | grep kappa_predictor
   (the services stop when this demo ends)
TXT
echo
echo "Demo finished: model published, aliased, read back, served from Kafka and hot-swapped."
