#!/usr/bin/env bash
# The Python package's benchmarks (part of `make bench`, or alone under scripts/with-kafka.sh):
# a registry, a trainer and a predictor from the release build; a fleet topic of
# BENCH_PY_EVENTS events (1,000,000) read through the package and through confluent-kafka;
# BENCH_PY_ROWS rows (1,000,000) scored through the package and through tritonclient.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
bin=${CARGO_TARGET_DIR:-$here/target}/release
py=${KAPPA_PY:-$HOME/.cache/kappa/py/bin/python}
run=$here/.run/bench-python
rm -rf "$run" && mkdir -p "$run"
pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
"$py" -m pip install -q "$here/python"

stamp=$(date +%s)
models="bench.py-models-$stamp" events="bench.py-fleet-$stamp"
registry=${BENCH_PY_REGISTRY_PORT:-50161} trainer=${BENCH_PY_TRAINER_PORT:-50162} predictor=${BENCH_PY_PREDICTOR_PORT:-50163}
wait_serving() { # port service
  for _ in $(seq 1 240); do
    "$bin/kappa" health "http://127.0.0.1:$1" --service "$2" >/dev/null 2>&1 && return
    sleep 0.5
  done
  echo "$2 on :$1 did not start; see $run" >&2; exit 1
}
"$bin/kappa-registry" --listen "127.0.0.1:$registry" --metrics-listen 127.0.0.1:9161 --models-topic "$models" \
  --transactional-id "bench-$models" --log warn >>"$run/registry.log" 2>&1 &
pids+=($!)
wait_serving "$registry" kappa.registry.v1.Registry
"$bin/kappa-trainer" --listen "127.0.0.1:$trainer" --metrics-listen 127.0.0.1:9162 \
  --registry "http://127.0.0.1:$registry" --jobs-topic "bench.py-jobs-$stamp" --log warn >>"$run/trainer.log" 2>&1 &
pids+=($!)
"$bin/kappa" models --registry "http://127.0.0.1:$registry" example --out "$run/model" --name bench-py >/dev/null
"$bin/kappa" models --registry "http://127.0.0.1:$registry" publish "$run/model/weights.safetensors" "$run/model/manifest.json" >/dev/null
"$bin/kappa-predictor" --listen "127.0.0.1:$predictor" --metrics-listen 127.0.0.1:9163 --models-topic "$models" \
  --model bench-py --log warn >>"$run/predictor.log" 2>&1 &
pids+=($!)
wait_serving "$trainer" kappa.trainer.v1.Trainer
wait_serving "$predictor" kappa.predictor.v1.Predictor
features=$("$py" -c "import json,sys; print(len(json.load(open(sys.argv[1]))['features']))" "$run/model/manifest.json")

rows=${BENCH_PY_EVENTS:-1000000}
"$bin/kappa" fleet --topic "$events" --cars 200 --events "$rows" --rate 0 --backdate-seconds 86400 >/dev/null
echo "| measurement | kappa-mesh (Python) | baseline (same run) | ratio | target |"
echo "|---|---|---|---|---|"
"$py" "$here/bench/python_package.py" read --trainer "http://127.0.0.1:$trainer" --topic "$events" \
  --rows "$rows" --rounds "${BENCH_PY_ROUNDS:-3}"
"$py" "$here/bench/python_package.py" predict --predictor "http://127.0.0.1:$predictor" \
  --rows "${BENCH_PY_ROWS:-1000000}" --features "$features" --rounds "${BENCH_PY_ROUNDS:-3}"
