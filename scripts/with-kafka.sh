#!/usr/bin/env bash
# Runs a command with the local Kafka broker up (and, with --jaeger, the local Jaeger). Starts
# what is not already running and stops only that afterwards (also on Ctrl-C or failure).
#   scripts/with-kafka.sh [--jaeger] command...
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
kafka="$here/deploy/kafka/kafka.sh"
jaeger="$here/deploy/jaeger/jaeger.sh"

with_jaeger=0
if [ "${1:-}" = "--jaeger" ]; then with_jaeger=1; shift; fi

started_kafka=0 started_jaeger=0
cleanup() {
  if [ "$started_jaeger" = 1 ]; then "$jaeger" down; fi
  if [ "$started_kafka" = 1 ]; then "$kafka" down; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if ! "$kafka" status >/dev/null 2>&1; then
  started_kafka=1
  "$kafka" up
fi
if [ "$with_jaeger" = 1 ] && ! "$jaeger" status >/dev/null 2>&1; then
  started_jaeger=1
  "$jaeger" up
fi

"$@"
