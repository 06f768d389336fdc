#!/usr/bin/env bash
# A local, real Jaeger (all-in-one, memory storage, loopback only) for following Kappa's traces.
#   jaeger.sh build | up | down | logs | status
# Jaeger's go.mod carries replace directives, so `go install` refuses it: it is built from a
# scratch module that records it as a tool, and the binary is cached outside the clone.
set -euo pipefail
version=v1.76.0
bin_dir=${KAPPA_TOOLS_BIN:-$HOME/.cache/kappa/bin}
binary="$bin_dir/jaeger-$version"
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=../lib/daemon.sh
. "$here/../lib/daemon.sh"
state=${JAEGER_STATE:-$here/.state}
ui_port=${JAEGER_UI_PORT:-16686}
otlp_grpc_port=${JAEGER_OTLP_GRPC_PORT:-4317}
otlp_http_port=${JAEGER_OTLP_HTTP_PORT:-4318}

build() {
  [ -x "$binary" ] && return
  command -v go >/dev/null || { echo "Go is required to build Jaeger: install Go 1.24+ and retry." >&2; exit 1; }
  echo "Building Jaeger $version into $bin_dir (once; a few minutes)..." >&2
  local scratch
  scratch=$(mktemp -d)
  (
    cd "$scratch"
    go mod init kappa.local/jaeger-build >/dev/null 2>&1
    go get -tool "github.com/jaegertracing/jaeger/cmd/jaeger@$version" >&2
    mkdir -p "$bin_dir"
    go build -o "$binary.tmp" github.com/jaegertracing/jaeger/cmd/jaeger >&2
  )
  mv "$binary.tmp" "$binary"
  rm -rf "$scratch"
}

pid_alive() { daemon_running "$state/jaeger.pid"; }

ready() { curl -fsS "http://127.0.0.1:$ui_port/api/services" >/dev/null 2>&1; }

up() {
  build
  if pid_alive && ready; then
    echo "Jaeger is already running: UI and API on http://127.0.0.1:$ui_port, OTLP on 127.0.0.1:$otlp_grpc_port."
    return
  fi
  mkdir -p "$state"
  cat >"$state/config.yaml" <<YAML
service:
  extensions: [jaeger_storage, jaeger_query, healthcheckv2]
  pipelines:
    traces:
      receivers: [otlp]
      processors: [batch]
      exporters: [jaeger_storage_exporter]
  telemetry:
    logs:
      level: warn
    metrics:
      level: none
extensions:
  healthcheckv2:
    use_v2: true
    http:
      endpoint: 127.0.0.1:${JAEGER_HEALTH_PORT:-13133}
  jaeger_query:
    storage:
      traces: memstore
    http:
      endpoint: 127.0.0.1:$ui_port
    grpc:
      endpoint: 127.0.0.1:${JAEGER_QUERY_GRPC_PORT:-16685}
  jaeger_storage:
    backends:
      memstore:
        memory:
          max_traces: 100000
receivers:
  otlp:
    protocols:
      grpc:
        endpoint: 127.0.0.1:$otlp_grpc_port
      http:
        endpoint: 127.0.0.1:$otlp_http_port
processors:
  batch:
    timeout: 200ms
exporters:
  jaeger_storage_exporter:
    trace_storage: memstore
YAML
  echo "Starting Jaeger $version (log: $state/jaeger.log)..."
  : >"$state/jaeger.log"
  daemon_start "$state/jaeger.pid" "$state/jaeger.log" "$binary" --config "$state/config.yaml"
  for _ in $(seq 1 100); do
    if ready; then
      echo "Jaeger is ready: UI and API on http://127.0.0.1:$ui_port, OTLP gRPC on 127.0.0.1:$otlp_grpc_port."
      return
    fi
    pid_alive || { echo "Jaeger exited during start-up; its log:" >&2; tail -20 "$state/jaeger.log" >&2; exit 1; }
    sleep 0.2
  done
  echo "Jaeger did not answer on port $ui_port within 20 s; see $state/jaeger.log" >&2
  exit 1
}

# Memory storage has nothing to flush, and Jaeger spends about 12 s of its shutdown retrying an
# export of its own spans to the port it has just closed: 5 s, then SIGKILL.
down() { daemon_stop "$state/jaeger.pid" Jaeger 5; }

case "${1:-}" in
  build) build; echo "$binary" ;;
  up) up ;;
  down) down ;;
  logs) tail -F "$state/jaeger.log" ;;
  status) if pid_alive && ready; then echo running; else echo stopped; exit 1; fi ;;
  *) echo "usage: $0 build|up|down|logs|status" >&2; exit 64 ;;
esac
