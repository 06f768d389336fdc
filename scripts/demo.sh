#!/usr/bin/env bash
# The demo behind `make demo` (Kafka is already up: see scripts/with-kafka.sh).
#  1. registry: publish an example model twice, list, alias, read it back from Kafka;
#  2. predictor: serve the model behind `production`, score the demo's CSV;
#  3. trainer: simulate a fleet's history into Kafka, train a detector on it, publish it with
#     lineage and promote it; the predictor swaps to it and flags the failing cars of live data;
#  4. move the alias back and forth while a client keeps calling: no failed request.
# It stops everything it started on exit, Ctrl-C included, and fails if any step fails.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
bin=${CARGO_TARGET_DIR:-$here/target}/debug
run=$here/.run/demo
rm -rf "$run"; mkdir -p "$run"

registry_port=${DEMO_REGISTRY_PORT:-50051}
metrics_port=${DEMO_REGISTRY_METRICS_PORT:-9101}
predictor_port=${DEMO_PREDICTOR_PORT:-50052}
predictor_metrics=${DEMO_PREDICTOR_METRICS_PORT:-9102}
trainer_port=${DEMO_TRAINER_PORT:-50053}
data=${DEMO_DATA:-$here/../shared/data/car-sensor-data.csv}
sensors=${DEMO_SENSOR_TOPIC:-sensor-data}
export KAPPA_REGISTRY=http://127.0.0.1:$registry_port
export KAPPA_PREDICTOR=http://127.0.0.1:$predictor_port
export KAPPA_TRAINER=http://127.0.0.1:$trainer_port
kappa() { "$bin/kappa" "$@"; }
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
metric() { curl -s "http://127.0.0.1:$predictor_metrics/metrics" | awk -v m="$1" '$1 == m {print $2}'; }

pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

wait_for() { # description, command...
  local what=$1; shift
  for _ in $(seq 1 120); do "$@" >/dev/null 2>&1 && return 0; sleep 0.5; done
  echo "$what did not happen within 60 s; logs are in .run/demo/" >&2; exit 1
}

step "1. Registry: starting kappa-registry on 127.0.0.1:$registry_port (log: .run/demo/registry.log)"
"$bin/kappa-registry" --listen "127.0.0.1:$registry_port" --metrics-listen "127.0.0.1:$metrics_port" >"$run/registry.log" 2>&1 &
pids+=($!)
wait_for "the registry's replay" kappa models list
grep -E "replayed" "$run/registry.log" | sed -E 's/\x1b\[[0-9;]*m//g' | sed 's/^/   /'

step "Publishing two versions of an untrained example model (validated, hashed, one Kafka transaction each)"
scale=()
[ -f "$data" ] && scale=(--scale-from "$data")
kappa models example --out "$run/v1" --name car-anomaly --seed 1 "${scale[@]}" >/dev/null
kappa models example --out "$run/v2" --name car-anomaly --seed 2 "${scale[@]}" >/dev/null
first=$(kappa models publish "$run/v1/weights.safetensors" "$run/v1/manifest.json" --output json | python3 -c 'import json,sys; print(json.load(sys.stdin)["version"])')
second=$(kappa models publish "$run/v2/weights.safetensors" "$run/v2/manifest.json" --output json | python3 -c 'import json,sys; print(json.load(sys.stdin)["version"])')
echo "   published car-anomaly v$first and v$second; publishing v$first's files again is idempotent:"
kappa models publish "$run/v1/weights.safetensors" "$run/v1/manifest.json" | sed 's/^/   /'
kappa models list | sed 's/^/   /'
kappa models alias car-anomaly production "$first" | sed 's/^/   /'
kappa models get car-anomaly --alias production --out "$run/production.safetensors" | sed 's/^/   /'
cmp -s "$run/production.safetensors" "$run/v1/weights.safetensors" && echo "   the bytes read back from Kafka are identical to the published file"

step "2. Predictor: kappa-predictor follows car-anomaly@production, reading the model from Kafka"
"$bin/kappa-predictor" --listen "127.0.0.1:$predictor_port" --metrics-listen "127.0.0.1:$predictor_metrics" \
  --model car-anomaly --follow production >"$run/predictor.log" 2>&1 &
pids+=($!)
wait_for "the predictor's first load" sh -c "curl -s http://127.0.0.1:$predictor_metrics/metrics | grep -q '^kappa_predictor_model_ready 1'"
echo "   serving version $(metric kappa_predictor_loaded_version)"
if [ -f "$data" ]; then
  head -n 501 "$data" >"$run/sample.csv"
  kappa predict "$run/sample.csv" 2>"$run/csv-summary.txt" | head -n 3 | sed 's/^/   /'
  echo "   ... $(cat "$run/csv-summary.txt")  (first 500 rows of the demo's CSV)"
fi

step "3. Trainer: 2 hours of fleet history into Kafka topic $sensors (50 cars, 30% may fail)"
kappa fleet --topic "$sensors" --cars 50 --events 20000 --rate 0 --backdate-seconds 7200 --failing-share 0.3 \
  --failure-chance 0.01 --seed 1 | sed 's/^/   /'
"$bin/kappa-trainer" --listen "127.0.0.1:$trainer_port" --metrics-listen 127.0.0.1:0 >"$run/trainer.log" 2>&1 &
pids+=($!)
wait_for "the trainer" kappa train list
echo "   training on the last 130 minutes, promoting to production if ROC AUC >= 0.9 and not worse than v$first:"
kappa train start --model car-anomaly --topic "$sensors" --last-minutes 130 --epochs 15 --hidden 12,6,12 \
  --promote production --min-roc-auc 0.9 --watch 2>"$run/train-progress.txt" | sed 's/^/   /'
grep -E "training|succeeded" "$run/train-progress.txt" | tail -n 3 | sed 's/^/   /'
trained=$(kappa models get car-anomaly --alias production --output json | python3 -c 'import json,sys; print(json.load(sys.stdin)["version"])')
for _ in $(seq 1 100); do [ "$(metric kappa_predictor_loaded_version)" = "$trained" ] && break; sleep 0.1; done
echo "   the predictor swapped to the trained version $(metric kappa_predictor_loaded_version)"

step "Live data from the fleet (another seed), scored by the predictor"
kappa fleet --topic "$sensors" --cars 50 --events 2500 --rate 0 --failing-share 0.3 --failure-chance 0.01 --seed 2 \
  --jsonl "$run/live.jsonl" | sed 's/^/   /'
kappa predict "$run/live.jsonl" >"$run/live-predictions.txt" 2>"$run/live-summary.txt"
echo "   $(cat "$run/live-summary.txt")"
python3 - "$run/live.jsonl" "$run/live-predictions.txt" <<'PY'
import json, sys
events = [json.loads(l) for l in open(sys.argv[1])]
preds = [l.split() for l in open(sys.argv[2])]
failing = {e["car"] for e in events if e["failure_occurred"] == "true"}
flagged = {p[0] for p, e in zip(preds, events) if "ANOMALY" in p}
hits = sum(1 for p, e in zip(preds, events) if "ANOMALY" in p and e["failure_occurred"] == "true")
positives = sum(1 for e in events if e["failure_occurred"] == "true")
false_alarms = sum(1 for p, e in zip(preds, events) if "ANOMALY" in p and e["failure_occurred"] == "false")
print(f"   cars with a failure (ground truth): {len(failing)}: {' '.join(sorted(failing, key=lambda c: int(c[3:])))}")
print(f"   cars flagged by the predictor:      {len(flagged & failing)} of them, plus {len(flagged - failing)} other(s)")
print(f"   failing events caught: {hits} of {positives}; false alarms: {false_alarms} of {len(events) - positives} normal events")
PY

step "4. Moving production back to v$first while a client keeps calling: the predictor swaps, no request fails"
for _ in $(seq 1 8); do cat "$run/live.jsonl"; done >"$run/load.jsonl"
kappa predict "$run/load.jsonl" >"$run/under-swap.txt" 2>"$run/under-swap-summary.txt" &
load_pid=$!
sleep 1
kappa models alias car-anomaly production "$first" | sed 's/^/   /'
wait "$load_pid"
echo "   load during the swap: $(cat "$run/under-swap-summary.txt")"
echo "   versions seen by that client: $(awk '{print $NF}' "$run/under-swap.txt" | sort | uniq -c | tr -s ' ' | tr '\n' ' ')"
kappa models alias car-anomaly production "$trained" | sed 's/^/   /'
for _ in $(seq 1 100); do [ "$(metric kappa_predictor_loaded_version)" = "$trained" ] && break; sleep 0.1; done
echo "   predictor back on v$(metric kappa_predictor_loaded_version) (the previous version was kept warm); swaps so far: $(metric kappa_predictor_swaps_total)"

step "Where to look next"
cat <<TXT
   grpcurl -plaintext 127.0.0.1:$registry_port list
   grpcurl -plaintext -d '{"name":"car-anomaly"}' 127.0.0.1:$registry_port kappa.registry.v1.Registry/ListVersions
   grpcurl -plaintext -d '{"name":"car-anomaly"}' 127.0.0.1:$predictor_port inference.GRPCInferenceService/ModelMetadata
   grpcurl -plaintext 127.0.0.1:$trainer_port kappa.trainer.v1.Trainer/ListJobs
   curl -s http://127.0.0.1:$metrics_port/metrics      # registry
   curl -s http://127.0.0.1:$predictor_metrics/metrics      # predictor
   logs: .run/demo/*.log   (the services stop when this demo ends)
TXT
echo
echo "Demo finished: history in Kafka -> trained -> published with lineage -> promoted -> served and hot-swapped."
