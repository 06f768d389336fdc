#!/usr/bin/env bash
# Fetches, starts and stops a pinned single-node Apache Kafka (KRaft) for development and tests.
#   kafka.sh up     idempotent: fetches jars once, formats storage once, starts, waits until ready
#   kafka.sh down   stops only the broker this script started (pid file), waits for it to exit
#   kafka.sh logs   follows the broker log
#   kafka.sh status exits 0 when the broker this script started is answering
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
state=${KAFKA_STATE_DIR:-$here/.state}
port=${KAFKA_PORT:-9092}
controller_port=${KAFKA_CONTROLLER_PORT:-9093}
lib=$state/lib
pidfile=$state/kafka.pid
logfile=$state/kafka.log

die() { echo "kafka.sh: $*" >&2; exit 1; }

require_tools() {
  command -v java >/dev/null || die "Java 17 or newer is required to run Kafka: install a JDK (e.g. 'apt-get install openjdk-17-jre-headless') and retry."
  command -v mvn >/dev/null || die "Maven is required to fetch Kafka from Maven Central: install it (e.g. 'apt-get install maven') and retry."
  local major
  major=$(java -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -1)
  [ "${major:-0}" -ge 17 ] || die "Kafka 4 needs Java 17 or newer; 'java -version' reports $major."
}

fetch() {
  if [ -f "$lib/.complete" ] && [ "$lib/.complete" -nt "$here/pom.xml" ]; then return; fi
  echo "Fetching Apache Kafka from Maven Central (cached in ~/.m2)..."
  rm -rf "$lib"; mkdir -p "$lib"
  mvn -q -B -Dstyle.color=never -f "$here/pom.xml" dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$lib" \
    || die "Maven could not fetch Kafka; check access to Maven Central and rerun 'make kafka-up'."
  touch "$lib/.complete"
}

running() { [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; }

answering() {
  # Ask the broker for its API versions; this succeeds only when the broker is serving requests.
  java -cp "$lib/*" -Dorg.slf4j.simpleLogger.defaultLogLevel=error \
    org.apache.kafka.tools.BrokerApiVersionsCommand --bootstrap-server "127.0.0.1:$port" >/dev/null 2>&1
}

up() {
  require_tools
  fetch
  if running; then
    echo "Kafka already running (pid $(cat "$pidfile")) on 127.0.0.1:$port."
    return
  fi
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    die "port $port is taken by another process; stop it or set KAFKA_PORT."
  fi
  mkdir -p "$state/data"
  sed -e "s#@DATA_DIR@#$state/data#" -e "s#@PORT@#$port#" -e "s#@CONTROLLER_PORT@#$controller_port#" \
    "$here/server.properties" > "$state/server.properties"
  if [ ! -f "$state/data/logs/meta.properties" ]; then
    local cluster_id
    cluster_id=$(java -cp "$lib/*" kafka.tools.StorageTool random-uuid 2>/dev/null | tail -1)
    java -cp "$lib/*" -Dorg.slf4j.simpleLogger.defaultLogLevel=warn kafka.tools.StorageTool format \
      --standalone -t "$cluster_id" -c "$state/server.properties" >/dev/null
  fi
  echo "Starting Kafka on 127.0.0.1:$port (log: $logfile)..."
  nohup java -Xms256m -Xmx1g -XX:+UseG1GC -Djava.awt.headless=true \
    -Dorg.slf4j.simpleLogger.defaultLogLevel=info -Dorg.slf4j.simpleLogger.showDateTime=true \
    -cp "$lib/*" kafka.Kafka "$state/server.properties" >"$logfile" 2>&1 &
  echo $! > "$pidfile"
  for _ in $(seq 1 120); do
    if answering; then echo "Kafka is ready on 127.0.0.1:$port."; return; fi
    running || { tail -30 "$logfile" >&2; die "Kafka exited during start-up; see $logfile."; }
    sleep 1
  done
  die "Kafka did not answer within 120 s; see $logfile."
}

down() {
  if ! running; then echo "No Kafka started by this script is running."; rm -f "$pidfile"; return; fi
  local pid; pid=$(cat "$pidfile")
  kill "$pid"
  for _ in $(seq 1 60); do
    kill -0 "$pid" 2>/dev/null || { rm -f "$pidfile"; echo "Kafka stopped."; return; }
    sleep 1
  done
  kill -9 "$pid" 2>/dev/null || true
  rm -f "$pidfile"
  echo "Kafka did not stop within 60 s and was killed."
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  logs) exec tail -n 100 -F "$logfile" ;;
  status) running && answering ;;
  reset) down; rm -rf "$state/data"; echo "Kafka data removed." ;;
  *) echo "usage: $0 up|down|logs|status|reset" >&2; exit 2 ;;
esac
