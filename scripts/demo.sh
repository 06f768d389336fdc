#!/usr/bin/env bash
# The demo behind `make demo`: the whole Kappa loop on one machine, traced in Jaeger. Kafka,
# the MQTT broker and Jaeger are already up (scripts/with-kafka.sh --jaeger --mqtt).
#   1. the mesh: kappa-bridge (MQTT -> Kafka), kappa-registry, two kappa-predictor replicas
#      scoring the sensor stream and following `production`, kappa-trainer; every service exports
#      its spans to Jaeger;
#   2. the cars publish their history over MQTT, one connection per car; the bridge carries it
#      into Kafka;
#   3. the broker moves that history to its remote tier (Kafka tiered storage) and deletes the
#      local copies, as it would last quarter's; then a continuous training job: round 1 reads
#      it back from the remote tier, trains, publishes and promotes, both predictors swap to it
#      and score the live stream, which the cars keep publishing;
#   4. round 2 retrains on the sliding window and publishes the next version; both predictors
#      move to it while a gRPC client keeps calling them, and not one call fails;
#   5. the cars' coolant sensors drift: the predictors' monitoring windows name the feature;
#   6. a wind-turbine fleet the code has never seen: inspected, trained with inferred features,
#      served, its events scored through their own schema.
# Then the mesh keeps running for DEMO_SECONDS (default 30) to be explored, and everything this
# script started is stopped, on Ctrl-C too. Any failed step makes it exit non-zero.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
bin=${CARGO_TARGET_DIR:-$HOME/.cache/kappa/target}/debug
for b in kappa kappa-registry kappa-predictor kappa-trainer kappa-bridge kappa-console; do
  [ -x "$bin/$b" ] || { echo "$bin/$b is missing: run \`make demo\`, which builds first" >&2; exit 1; }
done
run=${KAPPA_DEMO_RUN_DIR:-$here/.run/demo}
rm -rf "$run"; mkdir -p "$run"

demo_seconds=${DEMO_SECONDS:-30}
retrain_seconds=${DEMO_RETRAIN_SECONDS:-30}
registry_port=${DEMO_REGISTRY_PORT:-50051} predictor_a=${DEMO_PREDICTOR_PORT:-50052}
predictor_b=${DEMO_PREDICTOR_B_PORT:-50054} trainer_port=${DEMO_TRAINER_PORT:-50053}
registry_metrics=${DEMO_REGISTRY_METRICS_PORT:-9101} predictor_a_metrics=${DEMO_PREDICTOR_METRICS_PORT:-9102}
predictor_b_metrics=${DEMO_PREDICTOR_B_METRICS_PORT:-9104} trainer_metrics=${DEMO_TRAINER_METRICS_PORT:-9103}
bridge_port=${DEMO_BRIDGE_PORT:-50055} bridge_metrics=${DEMO_BRIDGE_METRICS_PORT:-9105}
console_port=${DEMO_CONSOLE_PORT:-50056} console_metrics=${DEMO_CONSOLE_METRICS_PORT:-9106}
console_http=${DEMO_CONSOLE_HTTP_PORT:-8080}
mqtt_url=mqtt://127.0.0.1:${MQTT_PORT:-1883}
# The topic each car publishes to: <prefix>/<car>/telemetry.
mqtt_prefix=${DEMO_MQTT_PREFIX:-cars}
models_topic=${DEMO_MODELS_TOPIC:-kappa.models}
sensors=${DEMO_SENSOR_TOPIC:-sensor-data}
predictions=${DEMO_PREDICTIONS_TOPIC:-model-predictions}
monitoring=${DEMO_MONITORING_TOPIC:-model-monitoring}
model=car-anomaly
jaeger_ui=http://127.0.0.1:${JAEGER_UI_PORT:-16686}
export OTEL_EXPORTER_OTLP_ENDPOINT=${OTEL_EXPORTER_OTLP_ENDPOINT:-http://127.0.0.1:${JAEGER_OTLP_GRPC_PORT:-4317}}
export OTEL_BSP_SCHEDULE_DELAY=${OTEL_BSP_SCHEDULE_DELAY:-500}
export KAPPA_REGISTRY=http://127.0.0.1:$registry_port
export KAPPA_TRAINER=http://127.0.0.1:$trainer_port
export KAPPA_MODELS_TOPIC=$models_topic

# Foreground calls only: a background job must run "$bin/kappa" itself, since killing a
# backgrounded function kills its subshell and leaves the binary running.
kappa() { "$bin/kappa" "$@"; }
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
say() { echo "   $*"; }
indent() { sed 's/^/   /'; }
metric() { # port, series: its value
  curl -s "http://127.0.0.1:$1/metrics" | awk -v m="$2" '$1 == m {print $2}'
}
metric_sum() { # port, name: the sum over all its labelled series
  curl -s "http://127.0.0.1:$1/metrics" | awk -v m="$2" 'index($1, m) == 1 && ($1 == m || substr($1, length(m) + 1, 1) == "{") {s += $2} END {print s + 0}'
}
json_field() { python3 -c 'import json,sys; d=json.load(sys.stdin); print(eval(sys.argv[1], {}, {"d": d}))' "$1"; }

pids=()
cleanup() {
  local status=$?
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ "$status" != 0 ]; then echo "demo FAILED (exit $status); the services' logs are in $run/" >&2; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Services started here: their pids and logs, so a service that dies is reported at once.
services=() service_logs=()
start_service() { # log name, command...
  local log=$run/$1.log; shift
  "$@" >"$log" 2>&1 &
  pids+=($!) services+=($!) service_logs+=("$log")
}
check_services() {
  for i in "${!services[@]}"; do
    if ! kill -0 "${services[$i]}" 2>/dev/null; then
      echo "a service exited: ${service_logs[$i]} ends with:" >&2
      tail -n 5 "${service_logs[$i]}" >&2
      exit 1
    fi
  done
}
port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for port in $registry_port $predictor_a $predictor_b $trainer_port $registry_metrics $predictor_a_metrics \
  $predictor_b_metrics $trainer_metrics $bridge_port $bridge_metrics $console_port $console_metrics $console_http; do
  port_free "$port" || { echo "port $port is in use: stop what listens there (a previous demo?) and retry" >&2; exit 1; }
done

wait_for() { # description, seconds, command...
  local what=$1 limit=$2; shift 2
  for _ in $(seq 1 $((limit * 4))); do "$@" >/dev/null 2>&1 && return 0; check_services; sleep 0.25; done
  echo "$what did not happen within $limit s; logs are in $run/" >&2; return 1
}
failed_requests() { # port: requests answered with any code but OK
  curl -s "http://127.0.0.1:$1/metrics" | awk '/^kappa_predictor_requests_total\{/ && !/code="OK"/ {s += $2} END {print s + 0}'
}
last_swap() { # predictor: how long its last swap took from the publish
  grep 'now serving' "$run/predictor-$1.log" | tail -n 1 | sed -E 's/.*publish_to_serving_ms=([0-9]+).*/\1 ms from publish to serving/'
}
serves() { [ "$(metric "$1" kappa_predictor_loaded_version)" = "$2" ]; }

step "1. The mesh (logs in ${run#$here/}/, spans to Jaeger at $OTEL_EXPORTER_OTLP_ENDPOINT)"
# The bridge first: it creates the sensor topic with 4 partitions for the two predictors to share.
start_service bridge "$bin/kappa-bridge" --listen "127.0.0.1:$bridge_port" --metrics-listen "127.0.0.1:$bridge_metrics" \
  --mqtt-url "$mqtt_url" --mqtt-topic "$mqtt_prefix/+/telemetry" --mqtt-client-id "kappa-demo-bridge-$bridge_port" \
  --mqtt-share-group "kappa-demo-bridges-$bridge_port" --mqtt-session-expiry-seconds 300 \
  --sensor-topic "$sensors" --sensor-topic-partitions 4 --dead-letter-topic "$sensors.dead-letter"
wait_for "the bridge's MQTT subscription" 60 sh -c "curl -s http://127.0.0.1:$bridge_metrics/metrics | grep -q '^kappa_bridge_ready 1'"
start_service registry "$bin/kappa-registry" --listen "127.0.0.1:$registry_port" \
  --metrics-listen "127.0.0.1:$registry_metrics"
for p in a b; do
  port_var=predictor_$p metrics_var=predictor_${p}_metrics
  start_service "predictor-$p" "$bin/kappa-predictor" --listen "127.0.0.1:${!port_var}" \
    --metrics-listen "127.0.0.1:${!metrics_var}" --model "$model" --follow production --stream \
    --sensor-topic "$sensors" --predictions-topic "$predictions" --consumer-group "${DEMO_CONSUMER_GROUP:-kappa-demo-predictors}" \
    --monitor-window-seconds 10 --monitoring-topic "$monitoring"
done
start_service trainer "$bin/kappa-trainer" --listen "127.0.0.1:$trainer_port" \
  --metrics-listen "127.0.0.1:$trainer_metrics"
start_service console "$bin/kappa-console" --listen "127.0.0.1:$console_port" --metrics-listen "127.0.0.1:$console_metrics" \
  --http-listen "127.0.0.1:$console_http" --predictor "http://127.0.0.1:$predictor_a" --predictor "http://127.0.0.1:$predictor_b" \
  --trainer "http://127.0.0.1:$trainer_port" \
  --predictions-topic "$predictions" --monitoring-topic "$monitoring" --jaeger-ui "$jaeger_ui"
wait_for "the registry's replay of $models_topic" 60 kappa models list
wait_for "the trainer" 60 kappa train list
wait_for "the predictors' metrics endpoints" 60 sh -c \
  "curl -sf http://127.0.0.1:$predictor_a_metrics/metrics && curl -sf http://127.0.0.1:$predictor_b_metrics/metrics"
say "kappa-bridge     grpc 127.0.0.1:$bridge_port   metrics :$bridge_metrics   $mqtt_url $mqtt_prefix/+/telemetry -> $sensors"
say "kappa-registry   grpc 127.0.0.1:$registry_port   metrics :$registry_metrics   models topic $models_topic"
say "kappa-predictor  grpc 127.0.0.1:$predictor_a   metrics :$predictor_a_metrics   follows $model@production, scores $sensors -> $predictions"
say "kappa-predictor  grpc 127.0.0.1:$predictor_b   metrics :$predictor_b_metrics   (second replica, same consumer group)"
say "kappa-console    http://127.0.0.1:$console_http   grpc 127.0.0.1:$console_port   metrics :$console_metrics   (open it in a browser)"
say "kappa-trainer    grpc 127.0.0.1:$trainer_port   metrics :$trainer_metrics"
say "Jaeger UI/API    $jaeger_ui"

step "2. 50 cars publish their history over MQTT ($mqtt_prefix/<car>/telemetry, QoS 1), 30% may develop one of five failures"
produced_before=$(metric "$bridge_metrics" kappa_bridge_produced_total)
kappa fleet --mqtt-url "$mqtt_url" --mqtt-topic "$mqtt_prefix/+/telemetry" --cars 50 --events 20000 --rate 0 \
  --backdate-seconds 1500 --failing-share 0.3 --failure-chance 0.01 --seed 1 --jsonl "$run/history.jsonl" | indent
bridged() { [ "$(metric "$bridge_metrics" kappa_bridge_produced_total)" -ge $((produced_before + 20000)) ]; }
if ! wait_for "the bridge to carry the 20000 messages into Kafka" 120 bridged; then
  echo "kappa-bridge: $(metric "$bridge_metrics" kappa_bridge_received_total) received from MQTT," \
    "$(metric "$bridge_metrics" kappa_bridge_produced_total) produced, $(metric "$bridge_metrics" kappa_bridge_in_flight) in flight," \
    "ready $(metric "$bridge_metrics" kappa_bridge_ready)" >&2
  exit 1
fi
say "kappa-bridge: $(metric "$bridge_metrics" kappa_bridge_produced_total) messages produced to $sensors, $(metric "$bridge_metrics" kappa_bridge_dead_lettered_total) dead-lettered, each acknowledged to MQTT only once Kafka had it"

step "3. Tiered storage: the broker moves the history to its remote tier, as it would last quarter's"
# Kafka's own admin tool: on a real cluster the topic's local.retention.ms (6 h as the bridge
# created it) does this by itself; here one second, so the history goes now.
kafka_bootstrap=${KAPPA_KAFKA_BOOTSTRAP:-127.0.0.1:9092}
kafka_configs() { java -cp "${KAFKA_LIB_DIR:-$here/deploy/kafka/.state/lib}/*" kafka.admin.ConfigCommand \
  --bootstrap-server "$kafka_bootstrap" --alter --entity-type topics --entity-name "$sensors" "$@" >/dev/null 2>&1; }
# remote.storage.enable too, for a topic an older demo created untiered (it can be turned on later).
say "kafka-configs.sh --alter --entity-name $sensors --add-config remote.storage.enable=true,local.retention.ms=1000"
kafka_configs --add-config remote.storage.enable=true,local.retention.ms=1000
all_remote() { # every partition's local copy starts at its end: the whole history is remote
  kappa data tiers --topic "$sensors" --output json | python3 -c 'import json, sys
d = json.load(sys.stdin)
sys.exit(0 if all(p["end"] == 0 or p["earliest_local"] == p["end"] for p in d["partitions"]) else 1)'
}
wait_for "the broker to upload the history and delete its local copies" 120 all_remote
# Back to the 6 h the bridge created it with: the live stream stays on the broker's disk.
kafka_configs --add-config local.retention.ms=21600000
kappa data tiers --topic "$sensors" | indent

step "4. Continuous training: the last 30 minutes, every ${retrain_seconds} s, two rounds; promote to production past the gate"
job=$(kappa train start --model "$model" --topic "$sensors" --label failure_occurred --last-minutes 30 --every-seconds "$retrain_seconds" \
  --max-runs 2 --epochs 15 --hidden 12,6,12 --promote production --min-roc-auc 0.9 --max-regression 0.02 \
  | awk '/^started / {print $2; exit}')
[ -n "$job" ] || { echo "the trainer did not accept the job" >&2; exit 1; }
say "job $job accepted"
status() { kappa train status "$job" --json; }
last=""
first=0
for _ in $(seq 1 480); do
  # One call per poll: the published version, then the progress line.
  read -r first line < <(status | json_field '"%s %s epoch %s loss %s read %s" % (d.get("publishedVersion","0"), d.get("progress",{}).get("phase","").replace("JOB_PHASE_","").lower(), d.get("progress",{}).get("epoch",0), round(float(d.get("progress",{}).get("loss",0)),4), d.get("progress",{}).get("samplesRead","0"))')
  [ "$line" != "$last" ] && say "round 1: $line"
  last=$line
  [ "$first" != "0" ] && break
  case "$line" in failed*|cancelled*) kappa train status "$job" | indent; exit 1 ;; esac
  sleep 0.5
done
[ "$first" != "0" ] || { echo "round 1 published nothing within 4 minutes" >&2; exit 1; }
wait_for "the promotion of v$first" 30 sh -c "'$bin/kappa' train status $job --json | grep -q promotionReason"
kappa train status "$job" | indent
say "round 1 read its history back from the remote tier: $(kappa train status "$job" | grep -o '[0-9]* of [0-9]* records from the remote tier')"

step "5. Both predictors swap to v$first and score the live stream"
wait_for "predictor A serving v$first" 60 serves "$predictor_a_metrics" "$first"
wait_for "predictor B serving v$first" 60 serves "$predictor_b_metrics" "$first"
for p in a b; do
  metrics_var=predictor_${p}_metrics
  say "predictor $p: serving v$(metric "${!metrics_var}" kappa_predictor_loaded_version), $(last_swap "$p")"
done
"$bin/kappa" fleet --mqtt-url "$mqtt_url" --mqtt-topic "$mqtt_prefix/+/telemetry" --cars 50 --rate 250 --duration-seconds 600 \
  --failing-share 0.3 --failure-chance 0.01 --seed 2 >"$run/live-fleet.txt" 2>&1 &
pids+=($!) live_fleet=$!
say "live fleet: 50 cars at 250 events/s (another seed) over MQTT -> kappa-bridge -> $sensors"
sleep 8
kappa predictions --topic "$predictions" --last-seconds 8 | indent

step "6. Round 2 retrains on the sliding window; a client keeps calling both predictors until they serve it"
next=$((first + 1))
load_status=0
kappa load --predictor "http://127.0.0.1:$predictor_a,http://127.0.0.1:$predictor_b" "$run/history.jsonl" \
  --seconds 240 --until-version "$next" --concurrency 8 --progress-seconds 5 2>&1 | tee "$run/load.txt" | indent \
  || load_status=$?
kappa train status "$job" | indent
[ "$load_status" = 0 ] || { echo "the client saw failures, or the predictors did not reach v$next" >&2; exit 1; }
for p in a b; do
  metrics_var=predictor_${p}_metrics
  m=${!metrics_var}
  say "predictor $p: swapped to version $(metric "$m" kappa_predictor_loaded_version), $(last_swap "$p"), swaps $(metric "$m" kappa_predictor_swaps_total), refused versions $(metric_sum "$m" kappa_predictor_load_failures_total), failed requests $(failed_requests "$m")"
done
say "the swap to version $next under load: $(grep -o '[0-9]* calls in [0-9.]* s' "$run/load.txt"), $(grep -o '[0-9]* failed;' "$run/load.txt" | tr -d ';') (as the client saw it)"
sleep 3
kappa predictions --topic "$predictions" --last-seconds 10 | indent

step "7. Drift: the cars' coolant sensors start reading 30 degrees hot; the predictors' monitoring windows say so"
kill "$live_fleet" 2>/dev/null || true
# Scored what was queued before the shift, so the windows after it hold shifted readings.
caught_up() {
  for m in $predictor_a_metrics $predictor_b_metrics; do metric_sum "$m" kappa_predictor_stream_lag | awk '{exit !($1 < 500)}' || return 1; done
}
wait_for "the predictors to catch up with the stream" 120 caught_up
shift_from=$(($(date +%s%N) / 1000000))
"$bin/kappa" fleet --mqtt-url "$mqtt_url" --mqtt-topic "$mqtt_prefix/+/telemetry" --cars 50 --rate 250 --duration-seconds 600 \
  --failing-share 0.3 --failure-chance 0.01 --seed 2 --shift coolant_temp=+30 >"$run/shifted-fleet.txt" 2>&1 &
pids+=($!)
say "every 10 s each predictor compares what it scored with $model's training data (PSI per feature), in"
say "its metrics and on $monitoring; kappa monitor --model $model follows them:"
# The two latest windows (one per predictor), until they name the feature.
drifted() {
  kappa monitor --model "$model" --topic "$monitoring" --last-seconds 10 --windows 2 >"$run/drift.txt"
  grep -q "DRIFT:.*coolant_temp" "$run/drift.txt"
}
wait_for "a monitoring window that names coolant_temp" 90 drifted
indent <"$run/drift.txt"
say "(curl -s http://127.0.0.1:$predictor_a_metrics/metrics | grep feature_drift_psi; the chart's PrometheusRule alerts on it)"

step "8. Backtest: v$next against v$first on the drifted minutes, replayed from Kafka (after both trained)"
sleep 5
shift_to=$(($(date +%s%N) / 1000000))
say "kappa backtest --model $model --version $next --against $first --topic $sensors --from-ms $shift_from --to-ms $shift_to"
kappa backtest --model "$model" --version "$next" --against "$first" --topic "$sensors" \
  --from-ms "$shift_from" --to-ms "$shift_to" | indent
say "(--output json for scripts; the trainer's --backtest-window gates a promotion on the same replay)"

step "9. Any telemetry: a wind-turbine fleet with other sensors, nested JSON, RFC 3339 time and a text label"
turbines=${DEMO_TURBINE_TOPIC:-$sensors-turbines}
kappa fleet --profile turbine --topic "$turbines" --cars 20 --events 6000 --rate 0 --backdate-seconds 3600 \
  --failing-share 0.3 --failure-chance 0.005 --seed 3 --jsonl "$run/turbines.jsonl" | indent
say "what a data scientist runs first: kappa data inspect --topic $turbines --label status.state --positive failed --time-field ts"
kappa data inspect --topic "$turbines" --label status.state --positive failed --time-field ts \
  | { sed '/^the trainer would use/q'; cat >/dev/null; } | indent
say "training with no --features: the trainer infers them from the data"
kappa train start --model turbine --topic "$turbines" --last-minutes 120 --label status.state --positive failed \
  --time-field ts --epochs 15 --watch 2>/dev/null | grep -E 'started|features|hold-out|samples' | indent
start_service predictor-turbine "$bin/kappa-predictor" --listen 127.0.0.1:0 --metrics-listen 127.0.0.1:0 \
  --model turbine --follow latest
wait_for "the turbine predictor to listen" 60 grep -q "listening for gRPC" "$run/predictor-turbine.log"
turbine_addr=$(grep "listening for gRPC" "$run/predictor-turbine.log" | grep -oE '[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+:[0-9]+' | head -n 1)
wait_for "the turbine predictor to serve v1" 60 sh -c "head -n 1 '$run/turbines.jsonl' | '$bin/kappa' predict --predictor http://$turbine_addr -"
say "the last 200 turbine events, each sent whole as JSON and read through the version's schema (anomalies only):"
tail -n 200 "$run/turbines.jsonl" | kappa predict --predictor "http://$turbine_addr" --id-field turbine --anomalies-only - 2>&1 \
  | tail -n 4 | indent

step "10. The console: the same mesh as pages (http://127.0.0.1:$console_http)"
console_api() { curl -sf "http://127.0.0.1:$console_http/api/$1"; }
wait_for "the console's fleet summary" 30 sh -c "curl -sf http://127.0.0.1:$console_http/api/fleet | grep -q topUnits"
console_api fleet | json_field '"fleet page: %d units, %d predictions, %d anomalies; most anomalous lately: %s" % (d["units"], d["events"], d["anomalies"], ", ".join("%s (%s)" % (u["key"], "/".join(f["feature"] for f in u["topFeatures"]) or "-") for u in d["topUnits"][:3]) or "none")' | indent
console_api serving | json_field '"serving page: " + "; ".join("%s v%s %s, %d swaps" % (r["status"]["instance"], r["status"].get("servingVersion", 0), "ready" if r["status"].get("ready") else "NOT ready", len(r["status"].get("swaps", []))) if r["status"] else r["url"] + ": " + r["problem"] for r in d["replicas"])' | indent
console_api "models/$model" | json_field '"models page: " + ", ".join("%s -> v%s" % kv for kv in d["aliases"].items()) + "; history: " + "; ".join("%s v%s%s" % (c["kind"], c["version"], (" " + c["alias"]) if c["alias"] else "") for c in d["history"][:4])' | indent

step "Where to look"
trace=$(status | json_field '(d.get("lineage",{}).get("traceContext",{}).get("traceparent","--").split("-")[1])')
cat <<TXT
   the console:          http://127.0.0.1:$console_http   (fleet, models, monitoring, serving)
   Jaeger UI:            $jaeger_ui/trace/$trace   (v$next's journey: training round -> publish -> registry transaction -> both predictors' load and swap)
   Jaeger API:           curl -s '$jaeger_ui/api/traces?service=kappa-predictor&operation=model.load&limit=5'
   metrics:              curl -s http://127.0.0.1:$predictor_a_metrics/metrics   (registry :$registry_metrics, trainer :$trainer_metrics, predictor B :$predictor_b_metrics, bridge :$bridge_metrics)
   the cars' MQTT:       $mqtt_url, topics $mqtt_prefix/<car>/telemetry (any MQTT client can publish there too)
   grpcurl -plaintext 127.0.0.1:$predictor_a list
   grpcurl -plaintext -d '{"name":"$model"}' 127.0.0.1:$registry_port kappa.registry.v1.Registry/ListVersions
   grpcurl -plaintext -d '{"name":"$model"}' 127.0.0.1:$predictor_a inference.GRPCInferenceService/ModelMetadata
   grpcurl -plaintext -d '{"job_id":"$job"}' 127.0.0.1:$trainer_port kappa.trainer.v1.Trainer/GetJob
   $bin/kappa predictions --topic $predictions --last-seconds 30
TXT
echo
echo "Demo complete: cars over MQTT -> kappa-bridge -> Kafka -> its remote tier -> trained -> published with lineage -> promoted -> both replicas swapped,"
echo "then retrained on the live window -> v$next -> swapped again under load with zero failed calls;"
echo "drifting coolant sensors were caught by the monitoring windows, and v$next was backtested against v$first on them;"
echo "and a turbine fleet with a schema of its own was inspected, trained on inferred features and served."
if [ "$demo_seconds" -gt 0 ]; then
  echo "The mesh keeps running for $demo_seconds s (DEMO_SECONDS) for you to explore; Ctrl-C stops it now."
  sleep "$demo_seconds"
fi
