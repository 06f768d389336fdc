#!/usr/bin/env bash
# Runs a command with the local Kafka broker up (and, with --jaeger, the local Jaeger). Starts
# what is not already running and stops only that afterwards (also on Ctrl-C or failure).
#   scripts/with-kafka.sh [--jaeger] [--secure] [--cluster] [--mqtt] command...
# --secure also starts the second, secure broker (SASL/SCRAM over TLS, ACLs) on 127.0.0.1:9094.
# --cluster also starts the three-node cluster (deploy/kafka/cluster.sh) on 127.0.0.1:9192-9194.
# --mqtt also starts the local MQTT broker (deploy/mqtt/mqtt.sh, HiveMQ CE) on 127.0.0.1:1883.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
kafka="$here/deploy/kafka/kafka.sh"
cluster="$here/deploy/kafka/cluster.sh"
mqtt="$here/deploy/mqtt/mqtt.sh"
jaeger="$here/deploy/jaeger/jaeger.sh"

with_jaeger=0 with_secure=0 with_cluster=0 with_mqtt=0
while true; do
  case "${1:-}" in
    --jaeger) with_jaeger=1; shift ;;
    --secure) with_secure=1; shift ;;
    --cluster) with_cluster=1; shift ;;
    --mqtt) with_mqtt=1; shift ;;
    *) break ;;
  esac
done

started_kafka=0 started_jaeger=0 started_secure=0 started_cluster=0 started_mqtt=0
cleanup() {
  if [ "$started_mqtt" = 1 ]; then "$mqtt" down; fi
  if [ "$started_cluster" = 1 ]; then "$cluster" down; fi
  if [ "$started_jaeger" = 1 ]; then "$jaeger" down; fi
  if [ "$started_secure" = 1 ]; then KAFKA_MODE=secure "$kafka" down; fi
  if [ "$started_kafka" = 1 ]; then "$kafka" down; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if ! "$kafka" status >/dev/null 2>&1; then
  started_kafka=1
  "$kafka" up
fi
if [ "$with_secure" = 1 ] && ! KAFKA_MODE=secure "$kafka" status >/dev/null 2>&1; then
  started_secure=1
  KAFKA_MODE=secure "$kafka" up
fi
if [ "$with_cluster" = 1 ] && ! "$cluster" status >/dev/null 2>&1; then
  started_cluster=1
  "$cluster" up
fi
if [ "$with_mqtt" = 1 ] && ! "$mqtt" status >/dev/null 2>&1; then
  started_mqtt=1
  "$mqtt" up
fi
if [ "$with_jaeger" = 1 ] && ! "$jaeger" status >/dev/null 2>&1; then
  started_jaeger=1
  "$jaeger" up
fi

"$@"
