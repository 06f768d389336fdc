#!/usr/bin/env bash
# `make bench`: release builds, Kafka and HiveMQ up (scripts/with-kafka.sh), then each benchmark with its
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
  registry_pid=$!
  pids+=("$registry_pid")
  for _ in $(seq 1 120); do
    curl -sf "http://127.0.0.1:$metrics/metrics" | grep -q '^kappa_registry_replay_seconds [0-9.e-]*[1-9]' && return
    sleep 0.5
  done
  echo "registry did not finish its replay; see $run/registry.log" >&2; exit 1
}

echo "## Registry: publish and get a 52 MiB model"
start_registry
bare_port=${BENCH_BARE_REGISTRY_PORT:-50155}
"$bin/registry-bench" --kafka-bootstrap "${KAPPA_KAFKA_BOOTSTRAP:-127.0.0.1:9092}" bare-server \
  --listen "127.0.0.1:$bare_port" >>"$run/bare-registry.log" 2>&1 &
bare_pid=$!
pids+=("$bare_pid")
for _ in $(seq 1 60); do (echo >"/dev/tcp/127.0.0.1/$bare_port") 2>/dev/null && break; sleep 0.5; done
"$bin/registry-bench" --registry "http://127.0.0.1:$port" throughput --iterations 5 --bare "http://127.0.0.1:$bare_port"
kill "$bare_pid" 2>/dev/null || true; wait "$bare_pid" 2>/dev/null || true

echo
echo "## Registry: start-up replay with 1,000 versions in the topic"
"$bin/registry-bench" --registry "http://127.0.0.1:$port" fill --versions 1000
kill "$registry_pid"; wait "$registry_pid" 2>/dev/null || true
start_registry
replay=$(curl -s "http://127.0.0.1:$metrics/metrics" | awk '/^kappa_registry_replay_seconds/ {print $2}')
records=$(curl -s "http://127.0.0.1:$metrics/metrics" | awk '/^kappa_registry_log_position/ {print $2}')
echo "replayed $records records (1,000+ versions with chunks and markers) in ${replay} s"

echo
echo "## Predictor: forward pass, hand-written vs candle"
"$bin/predictor-bench" forward

echo
echo "## Predictor: unary Predict against a bare tonic server of the same API"
"$bin/kappa" models --registry "http://127.0.0.1:$port" example --out "$run/model" --name bench-model >/dev/null
"$bin/kappa" models --registry "http://127.0.0.1:$port" publish "$run/model/weights.safetensors" "$run/model/manifest.json" >/dev/null
pport=${BENCH_PREDICTOR_PORT:-50152}; eport=${BENCH_ECHO_PORT:-50153}; pmetrics=${BENCH_PREDICTOR_METRICS_PORT:-9152}
"$bin/kappa-predictor" --listen "127.0.0.1:$pport" --metrics-listen "127.0.0.1:$pmetrics" --models-topic "$topic" \
  --model bench-model --log warn >>"$run/predictor.log" 2>&1 &
predictor_pid=$!
pids+=("$predictor_pid")
"$bin/predictor-bench" echo-server --listen "127.0.0.1:$eport" &
pids+=($!)
hport=${BENCH_HOP_ECHO_PORT:-50154}
"$bin/predictor-bench" echo-server --hop --listen "127.0.0.1:$hport" &
pids+=($!)
for _ in $(seq 1 120); do
  curl -sf "http://127.0.0.1:$pmetrics/metrics" | grep -q '^kappa_predictor_model_ready 1' && break
  sleep 0.5
done
# Three rounds in which the predictor, the echo and the hopping echo take turns.
"$bin/predictor-bench" serve --predictor "http://127.0.0.1:$pport" --echo "http://127.0.0.1:$eport" \
  --hop-echo "http://127.0.0.1:$hport" --seconds "${BENCH_SERVE_SECONDS:-2}" --rounds "${BENCH_SERVE_ROUNDS:-3}"
rss=$(awk '/VmRSS/ {print $2}' "/proc/$predictor_pid/status")
echo
echo "predictor RSS with the model loaded, after the load: $((rss / 1024)) MiB (target 32 MiB)"

echo
echo "## Predictor: the cost of tracing (spans exported to the local Jaeger on the same cores)"
# The same predictor, three ways, each against the echo baseline in the same invocation.
for cfg in "off:OTEL_SDK_DISABLED=true" "default (1% of untraced requests):OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4317" \
  "every request:OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4317 OTEL_TRACES_SAMPLER=parentbased_always_on"; do
  label=${cfg%%:*}; vars=${cfg#*:}
  tport=$((pport + 20)); tmetrics=$((pmetrics + 20))
  env $vars "$bin/kappa-predictor" --listen "127.0.0.1:$tport" --metrics-listen "127.0.0.1:$tmetrics" \
    --models-topic "$topic" --model bench-model --log warn >>"$run/traced-predictor.log" 2>&1 &
  tpid=$!
  for _ in $(seq 1 120); do
    curl -sf "http://127.0.0.1:$tmetrics/metrics" | grep -q '^kappa_predictor_model_ready 1' && break
    sleep 0.5
  done
  echo "tracing $label:"
  "$bin/predictor-bench" serve --predictor "http://127.0.0.1:$tport" --echo "http://127.0.0.1:$eport" \
    --seconds "${BENCH_SECONDS:-5}" | grep -E "throughput|p99 latency, 1 in flight"
  kill "$tpid"; wait "$tpid" 2>/dev/null || true
done

echo
echo "## Predictor: p99 with a shadow version scoring a copy of every call, against the same predictor without"
# The shadow follows the same model's latest version; the plain predictor above is the baseline.
sport=$((pport + 30)); smetrics=$((pmetrics + 30))
"$bin/kappa-predictor" --listen "127.0.0.1:$sport" --metrics-listen "127.0.0.1:$smetrics" --models-topic "$topic" \
  --model bench-model --shadow latest --shadow-topic "bench.shadow-$(date +%s)" --log warn >>"$run/shadow-predictor.log" 2>&1 &
spid=$!
for _ in $(seq 1 120); do
  curl -sf "http://127.0.0.1:$smetrics/metrics" | grep -q '^kappa_predictor_shadow_version [1-9]' && break
  sleep 0.5
done
"$bin/predictor-bench" shadow --plain "http://127.0.0.1:$pport" --shadowed "http://127.0.0.1:$sport" \
  --shadowed-metrics "127.0.0.1:$smetrics" --seconds "${BENCH_SECONDS:-5}" --rounds "${BENCH_SHADOW_ROUNDS:-5}"
kill "$spid"; wait "$spid" 2>/dev/null || true

echo
echo "## Predictor against MLServer: the same weights, the same third-party OIP load client (ghz), alternating"
tools=${KAPPA_TOOLS_BIN:-$HOME/.cache/kappa/bin}
if [ ! -x "$tools/ghz" ]; then
  echo "(building ghz v0.120.0 with Go into $tools, once)"
  (cd /tmp && GOBIN="$tools" GOFLAGS=-mod=mod go install github.com/bojand/ghz/cmd/ghz@v0.120.0)
fi
mlvenv=${KAPPA_MLSERVER_VENV:-$HOME/.cache/kappa/mlserver-venv}
if ! "$mlvenv/bin/python" -c "import mlserver, safetensors, numpy, onnxruntime" 2>/dev/null; then
  echo "(installing MLServer 1.7.1 from PyPI into $mlvenv, once)"
  python3 -m venv "$mlvenv" && "$mlvenv/bin/pip" install -q "mlserver==1.7.1" "safetensors==0.6.2" numpy "onnxruntime==1.31.1"
fi
mlport=$((pport + 40))
mldir=$run/mlserver && mkdir -p "$mldir/bench-model"
# MLServer's fastest set-up for a model this small: inference in the server process (no worker pool).
cat >"$mldir/settings.json" <<JSON
{"debug": false, "host": "127.0.0.1", "grpc_port": $mlport, "http_port": $((mlport + 1)), "metrics_port": $((mlport + 2)), "parallel_workers": 0}
JSON
cat >"$mldir/bench-model/model-settings.json" <<JSON
{"name": "bench-model", "implementation": "kappa_runtime.KappaAutoencoder", "parameters": {"uri": "$run/model"}}
JSON
(cd "$mldir" && PYTHONPATH="$here/bench/mlserver" exec "$mlvenv/bin/mlserver" start . >>"$run/mlserver.log" 2>&1) &
mlpid=$!
"$bin/oip-bench" echo-server --listen "127.0.0.1:$((pport + 50))" &
oecho=$!
for _ in $(seq 1 120); do
  grep -q "gRPC server running" "$run/mlserver.log" 2>/dev/null && break
  sleep 0.5
done
"$bin/oip-bench" compare --ghz "$tools/ghz" --proto "$here/proto/inference/grpc_predict_v2.proto" \
  --kappa "127.0.0.1:$pport" --other "127.0.0.1:$mlport" --echo "127.0.0.1:$((pport + 50))" \
  --model bench-model --manifest "$run/model/manifest.json" --seconds "${BENCH_SECONDS:-5}" --rounds "${BENCH_OIP_ROUNDS:-3}"
kill "$mlpid" "$oecho" 2>/dev/null || true; wait "$mlpid" "$oecho" 2>/dev/null || true

echo
echo "## ONNX: Kappa's engine against ONNX Runtime, in process, one thread each, the same graphs and rows"
py="${KAPPA_PY_VENV:-$HOME/.cache/kappa/py}/bin/python"
"$here/scripts/tools.sh" >/dev/null
onnx=$run/onnx && mkdir -p "$onnx"
"$py" "$here/tests/onnx/sklearn_fixtures.py" "$onnx" --only iforest,gradient_boosting_classifier,random_forest_regressor >/dev/null
torch_fixtures=$here/tests/onnx/torch
echo "| graph, rows a call | Kappa (tract, Kappa's ml operators) | ONNX Runtime 1.31 (Python) | ratio | target |"
echo "|---|---|---|---|---|"
"$bin/onnx-bench" --graph "$torch_fixtures/torch_autoencoder.onnx" --rows "$torch_fixtures/torch_autoencoder.json" \
  --label "PyTorch MLP autoencoder 8-6-3-6-8" --target 0.5 --python "$py" --ort "$here/bench/onnx_ort.py"
for family in iforest random_forest_regressor gradient_boosting_classifier; do
  "$bin/onnx-bench" --graph "$onnx/$family.onnx" --rows "$onnx/$family.json" --label "scikit-learn $family" \
    --python "$py" --ort "$here/bench/onnx_ort.py"
done

echo
echo "## ONNX: Kappa against MLServer with ONNX Runtime, the same graphs, the same ghz client, alternating"
"$bin/kappa" models --registry "http://127.0.0.1:$port" publish --name bench-onnx-ae \
  --onnx "$torch_fixtures/torch_autoencoder.onnx" --features s0_c0,s0_c1,s1_c0,s1_c1,s2_c0,s2_c1,s3_c0,s3_c1 \
  --score-output reconstruction --reconstruction-error --threshold 0.5 >/dev/null
"$bin/kappa" models --registry "http://127.0.0.1:$port" publish --name bench-onnx-iforest \
  --onnx "$onnx/iforest.onnx" --features f0,f1,f2,f3,f4,f5 --score-output scores --lower-is-anomalous --threshold 0 >/dev/null
omlport=$((pport + 70))
mkdir -p "$mldir/onnx/bench-onnx-ae" "$mldir/onnx/bench-onnx-iforest"
cat >"$mldir/onnx/settings.json" <<JSON
{"debug": false, "host": "127.0.0.1", "grpc_port": $omlport, "http_port": $((omlport + 1)), "metrics_port": $((omlport + 2)), "parallel_workers": 0}
JSON
for m in ae:$torch_fixtures/torch_autoencoder.onnx iforest:$onnx/iforest.onnx; do
  cat >"$mldir/onnx/bench-onnx-${m%%:*}/model-settings.json" <<JSON
{"name": "bench-onnx-${m%%:*}", "implementation": "onnx_runtime.OnnxRuntimeModel", "parameters": {"uri": "${m#*:}"}}
JSON
done
(cd "$mldir/onnx" && PYTHONPATH="$here/bench/mlserver" exec "$mlvenv/bin/mlserver" start . >>"$run/mlserver-onnx.log" 2>&1) &
omlpid=$!
"$bin/oip-bench" echo-server --listen "127.0.0.1:$((pport + 50))" &
oecho=$!
pids+=("$omlpid" "$oecho")
for _ in $(seq 1 120); do grep -q "gRPC server running" "$run/mlserver-onnx.log" 2>/dev/null && break; sleep 0.5; done
for m in ae:features:$torch_fixtures/torch_autoencoder.json iforest:X:$onnx/iforest.json; do
  name=bench-onnx-${m%%:*}; rest=${m#*:}; input=${rest%%:*}; rows=${rest#*:}
  oport=$((pport + 80)); ometrics=$((pmetrics + 80))
  "$bin/kappa-predictor" --listen "127.0.0.1:$oport" --metrics-listen "127.0.0.1:$ometrics" --models-topic "$topic" \
    --model "$name" --log warn >>"$run/onnx-predictor.log" 2>&1 &
  opid=$!
  pids+=("$opid")
  for _ in $(seq 1 120); do curl -sf "http://127.0.0.1:$ometrics/metrics" | grep -q '^kappa_predictor_model_ready 1' && break; sleep 0.5; done
  echo
  echo "$name:"
  "$bin/oip-bench" compare --ghz "$tools/ghz" --proto "$here/proto/inference/grpc_predict_v2.proto" \
    --kappa "127.0.0.1:$oport" --other "127.0.0.1:$omlport" --other-name "MLServer + ONNX Runtime" \
    --echo "127.0.0.1:$((pport + 50))" --model "$name" --rows "$rows" --input "$input" --batch 1 --batch 64 \
    --kappa-pid "$opid" --other-pid "$omlpid" --target-64 3 --target-1 0 \
    --seconds "${BENCH_SECONDS:-5}" --rounds "${BENCH_OIP_ROUNDS:-3}"
  kill "$opid"; wait "$opid" 2>/dev/null || true
done
kill "$omlpid" "$oecho" 2>/dev/null || true; wait "$omlpid" "$oecho" 2>/dev/null || true

echo
echo "## ONNX: a 50 MiB graph rolled out again and again, and another model's p99 meanwhile"
gport=$((pport + 90)); gmetrics=$((pmetrics + 90))
"$bin/kappa-predictor" --listen "127.0.0.1:$gport" --metrics-listen "127.0.0.1:$gmetrics" --models-topic "$topic" \
  --model bench-onnx-large --log warn >>"$run/onnx-large-predictor.log" 2>&1 &
gpid=$!
pids+=("$gpid")
for _ in $(seq 1 120); do curl -sf "http://127.0.0.1:$gmetrics/metrics" >/dev/null && break; sleep 0.25; done
"$bin/predictor-bench" onnx-swap --serving "http://127.0.0.1:$gport" --other "http://127.0.0.1:$pport" \
  --registry "http://127.0.0.1:$port" --model bench-onnx-large --mib 50 --swaps "${BENCH_ONNX_SWAPS:-50}"
kill "$gpid"; wait "$gpid" 2>/dev/null || true

echo
echo "## Predictor: publish -> first served response, and p99 with and without swaps"
"$bin/predictor-bench" swaps --predictor "http://127.0.0.1:$pport" --registry "http://127.0.0.1:$port" \
  --model bench-model --swaps "${BENCH_SWAPS:-50}"

echo
echo "## Predictor: a 100 MiB model, publish returned -> first response on it"
lport=$((pport + 60)); lmetrics=$((pmetrics + 60))
"$bin/kappa-predictor" --listen "127.0.0.1:$lport" --metrics-listen "127.0.0.1:$lmetrics" --models-topic "$topic" \
  --model bench-large --log warn >>"$run/large-predictor.log" 2>&1 &
lpid=$!
pids+=("$lpid")
# No model yet, so not ready: serving its metrics means it is listening.
for _ in $(seq 1 120); do curl -sf "http://127.0.0.1:$lmetrics/metrics" >/dev/null && break; sleep 0.25; done
"$bin/predictor-bench" large-swap --predictor "http://127.0.0.1:$lport" --registry "http://127.0.0.1:$port" \
  --model bench-large --mib "${BENCH_LARGE_MIB:-100}" --versions "${BENCH_LARGE_VERSIONS:-3}"
echo "predictor RSS with two 100 MiB versions (served and warm previous): $(($(awk '/VmRSS/ {print $2}' "/proc/$lpid/status") / 1024)) MiB"
kill "$lpid"; wait "$lpid" 2>/dev/null || true

echo
echo "## Predictor: stream scoring against a plain consume -> produce pipe"
st="bench.sensors-$(date +%s)"
events=${BENCH_STREAM_EVENTS:-200000}
"$bin/predictor-bench" stream-fill --topics "$st" --topics "$st.pipe-in" --events "$events"
pipe_rate=$("$bin/predictor-bench" stream-pipe --from "$st.pipe-in" --to "$st.pipe-out" --events "$events")
decoding_rate=$("$bin/predictor-bench" stream-pipe --from "$st.pipe-in" --to "$st.decoding-out" --events "$events" --decode)
"$bin/kappa-predictor" --listen "127.0.0.1:$((pport + 10))" --metrics-listen "127.0.0.1:$((pmetrics + 10))" \
  --models-topic "$topic" --model bench-model --stream --sensor-topic "$st" --predictions-topic "$st.predictions" \
  --consumer-group "bench-$st" --log warn >>"$run/stream-predictor.log" 2>&1 &
pids+=($!)
"$bin/predictor-bench" stream-wait --topic "$st.predictions" --events "$events" --baseline "$pipe_rate" \
  --decoding-baseline "$decoding_rate"

echo
echo "## Predictor: stream scoring with explanations against the same without (--explain-top 0)"
# Per flagged share: two rounds of each, alternating, each predictor on its own copy of the events.
offset=100
explain_round() { # kind (x: explained, p: plain), topic; prints "events/s flagged-share"
  local explain_top=3; [ "$1" = p ] && explain_top=0
  "$bin/kappa-predictor" --listen "127.0.0.1:$((pport + offset))" --metrics-listen "127.0.0.1:$((pmetrics + offset))" \
    --models-topic "$topic" --model bench-model --stream --sensor-topic "$2" --predictions-topic "$2.predictions" \
    --consumer-group "bench-$2" --explain-top "$explain_top" --log warn >>"$run/explain-predictor.log" 2>&1 &
  local xpid=$!
  "$bin/predictor-bench" stream-rate --topic "$2.predictions" --events "$events"
  kill "$xpid"; wait "$xpid" 2>/dev/null || true
  offset=$((offset + 2))
}
echo "| measurement | with explanations | without (--explain-top 0) | ratio | target |"
echo "|---|---|---|---|---|"
# One unusual event in 20 (a few per cent flagged, as in a fleet), then every event unusual.
for every in 20 1; do
  x="$st.e$every"
  "$bin/predictor-bench" stream-fill --topics "$x.x1" --topics "$x.p1" --topics "$x.x2" --topics "$x.p2" \
    --events "$events" --unusual-every "$every"
  results=()
  for round in 1 2; do
    for kind in x p; do results+=($(explain_round "$kind" "$x.$kind$round")); done
  done
  python3 - "$events" "${results[@]}" <<'PY'
import sys
events, x1, share, p1, _, x2, _, p2, _ = map(float, sys.argv[1:])
x, p = (x1 + x2) / 2, (p1 + p2) / 2
target = ">= 0.9x" if share < 0.2 else "(worst case)"
print(f"| stream scoring, {events:.0f} events x 2 rounds, alternating, {share:.0%} flagged (each record names its top 3 features) | {x:.0f} events/s | {p:.0f} events/s | {x / p:.2f}x | {target} |")
PY
done

echo
echo "## Console: pages and events at 50,000 predictions/s for 100,000 units, against the same console idle"
cport=$((port + 40)) cmetrics=$((metrics + 40)) chttp=${BENCH_CONSOLE_HTTP_PORT:-8190}
console_round() { # rate: prints the console-bench report
  local predictions="bench.console-$(date +%s%N)"
  "$bin/kappa-console" --listen "127.0.0.1:$cport" --metrics-listen "127.0.0.1:$cmetrics" --http-listen "127.0.0.1:$chttp" \
    --registry "http://127.0.0.1:$port" --predictions-topic "$predictions" --max-units 100000 --log warn >>"$run/console.log" 2>&1 &
  local cpid=$!
  for _ in $(seq 1 60); do curl -sf "http://127.0.0.1:$chttp/api/status" >/dev/null && break; sleep 0.5; done
  "$bin/console-bench" --topic "$predictions" --console "127.0.0.1:$chttp" --console-pid "$cpid" \
    --units 100000 --rate "$1" --seconds 30
  kill "$cpid"; wait "$cpid" 2>/dev/null || true
}
idle=$(console_round 0)
loaded=$(console_round 50000)
python3 - "$idle" "$loaded" <<'PY'
import json, sys
idle, loaded = (json.loads(a) for a in sys.argv[1:])
print("| measurement | at 50,000 predictions/s | idle (same console, same readers) | ratio | target |")
print("|---|---|---|---|---|")
print(f"| predictions produced per second | {loaded['predictions_per_second']:.0f} | 0 | | 50,000 |")
print(f"| page p99 (4 readers: fleet, a unit, models, monitoring, serving) | {loaded['page_p99_ms']:.1f} ms | {idle['page_p99_ms']:.1f} ms | {loaded['page_p99_ms'] / idle['page_p99_ms']:.1f}x | < 200 ms |")
print(f"| page p50 | {loaded['page_p50_ms']:.1f} ms | {idle['page_p50_ms']:.1f} ms | | |")
print(f"| anomaly produced -> on an open page, p50 / p99 | {loaded['event_p50_ms']:.0f} / {loaded['event_p99_ms']:.0f} ms | | | ~1 s (summaries once a second) |")
print(f"| units held; resident memory, first / second half of the run | {loaded['units_on_page']}; {loaded['rss_mib_first_half_max']:.0f} / {loaded['rss_mib_second_half_max']:.0f} MiB | {idle['rss_mib_second_half_max']:.0f} MiB | | bounded |")
PY

echo
echo "## Trainer: training samples/s against PyTorch (same MLP, AdamW, batch 64, 1 thread)"
rows=${BENCH_TRAIN_ROWS:-50000}; epochs=${BENCH_TRAIN_EPOCHS:-3}
kappa_rate=$(RAYON_NUM_THREADS=1 "$bin/train-bench" train --rows "$rows" --epochs "$epochs")
# The notebook's venv (scripts/tools.sh installs it) has PyTorch.
torch_python=${KAPPA_TORCH_PYTHON:-$HOME/.cache/kappa/notebook-venv/bin/python}
torch_rate=$("$torch_python" "$here/bench/torch_train.py" "$rows" "$epochs" 1)
echo "| measurement | kappa-trainer (candle) | PyTorch | ratio | budget |"
echo "|---|---|---|---|---|"
echo "| training samples/s, $rows rows x $epochs epochs | $kappa_rate | $torch_rate | $(python3 -c "print(f'{$kappa_rate/$torch_rate:.2f}x')") | >= 0.5x |"

echo
echo "## Trainer: Kafka read rate"
ft="bench.fleet-$(date +%s)"
"$bin/kappa" fleet --topic "$ft" --cars 100 --events 200000 --rate 0 --backdate-seconds 7200 >/dev/null
"$bin/train-bench" read --topic "$ft"

echo
echo "## Trainer: a range read from the remote tier against the same range on the broker's disk"
# 1,000,000 fleet events in 16 MiB segments, twice (the same seed): the broker uploads each
# segment as it rolls; one topic's local copies go once its local.retention.ms is cut to a second,
# the other's stay, and the two are read in turn.
tt="bench.tiered-$(date +%s)"
tiered_configs=(--topic-config remote.storage.enable=true --topic-config segment.bytes=16777216
  --topic-config retention.ms=-1 --topic-config local.retention.ms=-2)
for t in "$tt" "$tt-local"; do
  "$bin/train-bench" create-topic --topic "$t" --partitions 4 "${tiered_configs[@]}"
  "$bin/kappa" fleet --topic "$t" --cars 100 --events 1000000 --rate 0 --backdate-seconds 36000 --seed 7 >/dev/null
done
"$bin/train-bench" tiered --topic "$tt" --local-topic "$tt-local" "${tiered_configs[@]}" \
  --log-dir "$here/deploy/kafka/.state/data/logs"

echo
echo "## Python package: read_range against confluent-kafka, predict against tritonclient"
"$here/scripts/bench-python.sh"

echo
echo "## Bridge: MQTT -> Kafka through kappa-bridge against a plain MQTT subscriber (HiveMQ CE, same broker)"
"$bin/bridge-bench" --kafka-bootstrap "${KAPPA_KAFKA_BOOTSTRAP:-127.0.0.1:9092}" throughput \
  --messages "${BENCH_BRIDGE_MESSAGES:-20000}" --rounds "${BENCH_BRIDGE_ROUNDS:-3}"

echo
echo "## Bridge: the largest fleet (one MQTT connection per car) carried into Kafka with zero loss over a minute"
"$bin/bridge-bench" --kafka-bootstrap "${KAPPA_KAFKA_BOOTSTRAP:-127.0.0.1:9092}" fleet \
  --sizes "${BENCH_FLEET_SIZES:-1000,4000,16000}" --seconds "${BENCH_FLEET_SECONDS:-60}" --drain-seconds 240
