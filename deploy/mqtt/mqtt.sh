#!/usr/bin/env bash
# Fetches, starts and stops a local MQTT broker, HiveMQ Community Edition (the reference demo's
# broker) in embedded mode, for development, demos and tests. Loopback only.
#   mqtt.sh up      idempotent: builds the launcher once (Maven Central, cached in ~/.m2),
#                   starts the broker on 127.0.0.1:1883 (MQTT_PORT, anonymous) and
#                   127.0.0.1:8883 (MQTT_TLS_PORT: TLS, a user name and password), waits until
#                   it accepts. The TLS listener's CA is $state/tls/ca.pem; the users are
#                   bridge and fleet, their passwords in $state/clients/<user>.password
#   mqtt.sh down    stops only the broker this script started
#   mqtt.sh status  exits 0 when that broker accepts connections
#   mqtt.sh logs    follows its log
#   mqtt.sh reset   stops it and deletes its sessions and queued messages
# MQTT_STATE_DIR moves the state (a test can run a broker of its own).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=../lib/local-tls.sh
. "$here/../lib/local-tls.sh"
# shellcheck source=../lib/daemon.sh
. "$here/../lib/daemon.sh"
state=${MQTT_STATE_DIR:-$here/.state}
port=${MQTT_PORT:-1883}
tls_port=${MQTT_TLS_PORT:-8883}
build=${MQTT_BUILD_DIR:-$here/.state/build}
pidfile=$state/hivemq.pid
logfile=$state/hivemq.log

die() { echo "mqtt.sh: $*" >&2; exit 1; }

require_tools() {
  command -v java >/dev/null || die "Java 17 or newer is required to run HiveMQ: install a JDK (e.g. 'apt-get install openjdk-17-jre-headless') and retry."
  command -v mvn >/dev/null || die "Maven is required to fetch HiveMQ from Maven Central: install it (e.g. 'apt-get install maven') and retry."
}

fetch() {
  local stamp=$build/.complete
  if [ -f "$stamp" ] && [ "$stamp" -nt "$here/pom.xml" ] && [ "$stamp" -nt "$here/src/main/java/dev/kappa/mqtt/Broker.java" ]; then
    return
  fi
  echo "Fetching HiveMQ CE from Maven Central (cached in ~/.m2)..."
  rm -rf "$build"
  mvn -q -B -Dstyle.color=never -f "$here/pom.xml" -Dkappa.mqtt.build="$build" package \
    || die "Maven could not build the HiveMQ launcher; check access to Maven Central and rerun 'make mqtt-up'."
  touch "$stamp"
}

# TLS for the TLS listener (a CA, a certificate for 127.0.0.1/localhost in a PKCS#12 keystore)
# and a password per user, made once.
secure_material() {
  [ -f "$state/.material" ] && return
  rm -rf "$state/tls" "$state/clients"; mkdir -p "$state/clients"
  local_broker_tls "$state/tls" kappa-local-mqtt-ca "$state/keystore.password" || die "could not make the TLS material."
  : > "$state/users"
  for user in bridge fleet; do
    local password; password=$(secret)
    printf '%s\n' "$password" > "$state/clients/$user.password"
    printf '%s:%s\n' "$user" "$password" >> "$state/users"
  done
  chmod 600 "$state"/clients/* "$state/users"
  touch "$state/.material"
}

running() { daemon_running "$pidfile"; }
accepting() { (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; }

up() {
  require_tools
  fetch
  if running; then
    echo "HiveMQ already running (pid $(cat "$pidfile")) on 127.0.0.1:$port."
    return
  fi
  accepting && die "port $port is taken by another process; stop it or set MQTT_PORT."
  (exec 3<>"/dev/tcp/127.0.0.1/$tls_port") 2>/dev/null && die "port $tls_port is taken by another process; stop it or set MQTT_TLS_PORT."
  mkdir -p "$state/conf" "$state/data" "$state/extensions"
  secure_material
  sed -e "s#@PORT@#$port#" -e "s#@TLS_PORT@#$tls_port#" -e "s#@KEYSTORE@#$state/tls/broker.p12#" \
    -e "s#@KEYSTORE_PASSWORD@#$(cat "$state/keystore.password")#g" "$here/config.xml" > "$state/conf/config.xml"
  chmod 600 "$state/conf/config.xml"
  echo "Starting HiveMQ CE on 127.0.0.1:$port and, with TLS and passwords, 127.0.0.1:$tls_port (log: $logfile)..."
  daemon_start "$pidfile" "$logfile" java -Xms64m -Xmx512m -Djava.awt.headless=true \
    -cp "$build/kappa-local-mqtt-1.0.0.jar:$build/lib/*" dev.kappa.mqtt.Broker \
    "$state/conf" "$state/data" "$state/extensions" "$state/users" "$tls_port"
  for _ in $(seq 1 60); do
    if accepting && grep -q "HiveMQ CE started" "$logfile"; then
      echo "HiveMQ CE is ready on 127.0.0.1:$port."
      return
    fi
    running || { tail -30 "$logfile" >&2; die "HiveMQ exited during start-up; see $logfile."; }
    sleep 1
  done
  die "HiveMQ did not accept connections within 60 s; see $logfile."
}

down() { daemon_stop "$pidfile" HiveMQ 30; }

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) running && accepting ;;
  logs) exec tail -n 100 -F "$logfile" ;;
  reset) down; rm -rf "$state/data" "$state/conf" "$state/extensions" "$state/tls" "$state/clients" "$state/users" \
    "$state/keystore.password" "$state/.material"; echo "HiveMQ data removed." ;;
  *) echo "usage: $0 up|down|status|logs|reset" >&2; exit 2 ;;
esac
