#!/usr/bin/env bash
# Fetches, starts and stops a pinned single-node Apache Kafka (KRaft) for development and tests.
#   kafka.sh up     idempotent: fetches jars once, formats storage once, starts, waits until ready
#   kafka.sh down   stops only the broker this script started (pid file), waits for it to exit
#   kafka.sh logs   follows the broker log
#   kafka.sh status exits 0 when the broker this script started is answering
# KAFKA_MODE=secure runs a second, separate broker (127.0.0.1:9094) with SASL/SCRAM over TLS and
# ACLs: one SCRAM user per Kappa service with least-privilege ACLs, and their client property
# files in .state-secure/clients/ (see the README's Security section).
# KAFKA_MODE=node is one node of the three-node cluster that cluster.sh runs (it sets the node's
# KAFKA_NODE_ID, KAFKA_STATE_DIR, ports, KAFKA_VOTERS and KAFKA_CLUSTER_ID); `start` starts
# without waiting (a node answers only once a quorum of its peers is up), `wait` waits, `kill`
# kills it with SIGKILL, as a crash would.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=../lib/local-tls.sh
. "$here/../lib/local-tls.sh"
# shellcheck source=../lib/daemon.sh
. "$here/../lib/daemon.sh"
mode=${KAFKA_MODE:-plain}
case "$mode" in
  plain)
    state=${KAFKA_STATE_DIR:-$here/.state}
    port=${KAFKA_PORT:-9092}
    controller_port=${KAFKA_CONTROLLER_PORT:-9093}
    template=$here/server.properties ;;
  secure)
    state=${KAFKA_STATE_DIR:-$here/.state-secure}
    port=${KAFKA_PORT:-9094}
    controller_port=${KAFKA_CONTROLLER_PORT:-9095}
    template=$here/server-secure.properties ;;
  node)
    state=${KAFKA_STATE_DIR:?KAFKA_STATE_DIR is set by cluster.sh}
    port=${KAFKA_PORT:?}
    controller_port=${KAFKA_CONTROLLER_PORT:?}
    template=$here/server-cluster.properties ;;
  *) echo "kafka.sh: KAFKA_MODE must be plain, secure or node, not $mode" >&2; exit 2 ;;
esac
# The jars are the same for both modes.
lib=${KAFKA_LIB_DIR:-$here/.state/lib}
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

running() { daemon_running "$pidfile"; }

admin_config() {
  if [ "$mode" = secure ]; then echo --command-config "$state/clients/admin.java.properties"; fi
}

answering() {
  # Ask the broker for its API versions; this succeeds only when the broker is serving requests.
  # shellcheck disable=SC2046
  java -cp "$lib/*" -Dorg.slf4j.simpleLogger.defaultLogLevel=error \
    org.apache.kafka.tools.BrokerApiVersionsCommand --bootstrap-server "127.0.0.1:$port" $(admin_config) >/dev/null 2>&1
}

# The Kappa services' users and what each may do: least privilege, prefixed resources so the
# default names and the tests' unique ones (test.models-…) are both covered.
users="admin registry predictor trainer fleet"


# TLS for the broker (a CA, a certificate for 127.0.0.1/localhost in a PKCS#12 keystore), a
# password per user, their librdkafka property files, and the admin's Java client config.
secure_material() {
  [ -f "$state/.material" ] && return
  rm -rf "$state/tls" "$state/clients"; mkdir -p "$state/clients"
  local tls=$state/tls
  local_broker_tls "$tls" kappa-local-kafka-ca "$state/keystore.password" || die "could not make the TLS material."
  for user in $users; do
    local password; password=$(secret)
    printf '%s\n' "$password" > "$state/clients/$user.password"
    cat > "$state/clients/$user.properties" <<PROPS
# librdkafka properties for the $user principal of the local secure broker (--kafka-properties-file)
security.protocol=SASL_SSL
sasl.mechanism=SCRAM-SHA-512
sasl.username=$user
sasl.password=$password
ssl.ca.location=$tls/ca.pem
PROPS
  done
  cat > "$state/clients/admin.java.properties" <<PROPS
security.protocol=SASL_SSL
sasl.mechanism=SCRAM-SHA-512
sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="admin" password="$(cat "$state/clients/admin.password")";
ssl.truststore.type=PEM
ssl.truststore.location=$tls/ca.pem
PROPS
  chmod 600 "$state"/clients/* "$state/keystore.password" "$tls"/*.key
  touch "$state/.material"
}

acl() {
  # shellcheck disable=SC2046
  java -cp "$lib/*" -Dorg.slf4j.simpleLogger.defaultLogLevel=error org.apache.kafka.tools.AclCommand \
    --bootstrap-server "127.0.0.1:$port" $(admin_config) --add --force "$@" >/dev/null
}

# What each service may do, and nothing more. The same commands (with your topic names) are in
# the README for a real cluster.
secure_acls() {
  [ -f "$state/.acls" ] && return
  local p="--resource-pattern-type prefixed"
  # The registry: owns the models topic (create, read, write) through its transactional id.
  acl --allow-principal User:registry $p --topic kappa.models --topic test.models \
    --operation Create --operation Describe --operation DescribeConfigs --operation Read --operation Write
  acl --allow-principal User:registry $p --transactional-id kappa-registry --transactional-id test-registry \
    --operation Describe --operation Write
  # Predictors: read the models topic and the sensor topic, write predictions.
  acl --allow-principal User:predictor $p --topic kappa.models --topic test.models --topic sensor-data \
    --topic test.sensors --operation Describe --operation Read
  acl --allow-principal User:predictor $p --topic model-predictions --topic test.predictions \
    --operation Create --operation Describe --operation Write
  # ...and exactly-once stream scoring's transactional ids (prefixed by the consumer group).
  acl --allow-principal User:predictor $p --transactional-id kappa-predictor --transactional-id test-group \
    --operation Describe --operation Write
  # The trainer: reads sensor data, owns its jobs topic.
  acl --allow-principal User:trainer $p --topic sensor-data --topic test.sensors --operation Describe --operation Read
  acl --allow-principal User:trainer $p --topic kappa.training-jobs --topic test.jobs \
    --operation Create --operation Describe --operation DescribeConfigs --operation Read --operation Write
  # The fleet simulator (or the MQTT bridge): writes sensor data.
  acl --allow-principal User:fleet $p --topic sensor-data --topic test.sensors \
    --operation Create --operation Describe --operation Write
  # Consumer groups by service prefix; idempotent producers for those that produce.
  acl --allow-principal User:registry --allow-principal User:predictor --allow-principal User:trainer $p \
    --group kappa- --operation Read
  acl --allow-principal User:registry --allow-principal User:predictor --allow-principal User:trainer \
    --allow-principal User:fleet --cluster --operation IdempotentWrite
  touch "$state/.acls"
}

start() {
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
  local scram=()
  if [ "$mode" = secure ]; then
    secure_material
    for user in $users; do
      scram+=(--add-scram "SCRAM-SHA-512=[name=$user,password=$(cat "$state/clients/$user.password")]")
    done
    # The controller listener's own principal (states made before it had none get one now).
    if [ ! -f "$state/controller.password" ]; then
      (umask 077; secret > "$state/controller.password")
    fi
  fi
  sed -e "s#@DATA_DIR@#$state/data#" -e "s#@PORT@#$port#" -e "s#@CONTROLLER_PORT@#$controller_port#" \
    -e "s#@STATE_DIR@#$state#" -e "s#@REMOTE_TIER_DIR@#${KAFKA_REMOTE_TIER_DIR:-$state/remote-tier}#" \
    -e "s#@NODE_ID@#${KAFKA_NODE_ID:-1}#" -e "s#@VOTERS@#${KAFKA_VOTERS:-}#" \
    -e "s#@ADMIN_PASSWORD@#$(cat "$state/clients/admin.password" 2>/dev/null || true)#" \
    -e "s#@KEYSTORE_PASSWORD@#$(cat "$state/keystore.password" 2>/dev/null || true)#" \
    -e "s#@CONTROLLER_PASSWORD@#$(cat "$state/controller.password" 2>/dev/null || true)#g" \
    "$template" > "$state/server.properties"
  chmod 600 "$state/server.properties"
  if [ ! -f "$state/data/logs/meta.properties" ]; then
    if [ "$mode" = node ]; then
      # A static quorum (controller.quorum.voters): every node formatted with the one cluster id.
      java -cp "$lib/*" -Dorg.slf4j.simpleLogger.defaultLogLevel=warn kafka.tools.StorageTool format \
        -t "${KAFKA_CLUSTER_ID:?}" -c "$state/server.properties" >/dev/null
    else
      local cluster_id
      cluster_id=$(java -cp "$lib/*" kafka.tools.StorageTool random-uuid 2>/dev/null | tail -1)
      java -cp "$lib/*" -Dorg.slf4j.simpleLogger.defaultLogLevel=warn kafka.tools.StorageTool format \
        --standalone -t "$cluster_id" -c "$state/server.properties" "${scram[@]}" >/dev/null
    fi
  fi
  echo "Starting Kafka on 127.0.0.1:$port (log: $logfile)..."
  # From the state directory: the remote storage manager's test jar logs to a relative path.
  (cd "$state" && daemon_start "$pidfile" "$logfile" java -Xms256m "-Xmx${KAFKA_HEAP:-1g}" -XX:+UseG1GC -Djava.awt.headless=true \
    -Dorg.slf4j.simpleLogger.defaultLogLevel=info -Dorg.slf4j.simpleLogger.showDateTime=true \
    -cp "$lib/*" kafka.Kafka "$state/server.properties")
}

wait_ready() {
  for _ in $(seq 1 120); do
    if answering; then
      if [ "$mode" = secure ]; then secure_acls; fi
      echo "Kafka ($mode) is ready on 127.0.0.1:$port."
      return
    fi
    running || { tail -30 "$logfile" >&2; die "Kafka exited during start-up; see $logfile."; }
    sleep 1
  done
  die "Kafka did not answer within 120 s; see $logfile."
}

up() { start; wait_ready; }

kill9() {
  if running; then echo "Kafka on 127.0.0.1:$port killed (SIGKILL)."; fi
  daemon_kill "$pidfile"
}

down() { daemon_stop "$pidfile" Kafka "${KAFKA_STOP_SECONDS:-60}"; }

case "${1:-}" in
  up) up ;;
  start) start ;;
  wait) wait_ready ;;
  kill) kill9 ;;
  down) down ;;
  logs) exec tail -n 100 -F "$logfile" ;;
  status) running && answering ;;
  reset) down; rm -rf "$state/data" "$state/remote-tier" "$state/.acls" "$state/.material" "$state/tls" "$state/clients"; echo "Kafka data removed." ;;
  *) echo "usage: $0 up|start|wait|kill|down|logs|status|reset" >&2; exit 2 ;;
esac
