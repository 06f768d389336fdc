#!/usr/bin/env bash
# Runs a command with the local Kafka broker up. Starts the broker if none is running and stops
# it afterwards (also on Ctrl-C or failure); a broker that was already running is left alone.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
kafka="$here/deploy/kafka/kafka.sh"

started=0
if ! "$kafka" status >/dev/null 2>&1; then
  "$kafka" up
  started=1
fi
cleanup() { if [ "$started" = 1 ]; then "$kafka" down; fi; }
trap cleanup EXIT
trap 'exit 130' INT TERM

"$@"
