#!/usr/bin/env bash
# A local three-node Apache Kafka (KRaft) cluster for the reliability tests and the soak: each
# node is broker and controller, topics are replicated 3 times with min.insync.replicas=2.
#   cluster.sh up          idempotent: starts the nodes not running, waits until all answer
#   cluster.sh down        stops every node this script started
#   cluster.sh kill N      kills node N (1-3) with SIGKILL, as a crash would
#   cluster.sh start N     starts node N again and waits until it answers
#   cluster.sh status      exits 0 when all three nodes answer
#   cluster.sh bootstrap   prints the bootstrap servers
#   cluster.sh reset       stops the nodes and deletes their data
# Brokers listen on 127.0.0.1:9192-9194 and controllers on 9292-9294 (KAFKA_CLUSTER_PORT and
# KAFKA_CLUSTER_CONTROLLER_PORT move the first of each); state lives in .state-cluster/.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
state=${KAFKA_CLUSTER_STATE_DIR:-$here/.state-cluster}
base=${KAFKA_CLUSTER_PORT:-9192}
controller_base=${KAFKA_CLUSTER_CONTROLLER_PORT:-9292}
nodes="1 2 3"

voters() {
  local v=""
  for n in $nodes; do v="$v${v:+,}$n@127.0.0.1:$((controller_base + n - 1))"; done
  echo "$v"
}

bootstrap() {
  local b=""
  for n in $nodes; do b="$b${b:+,}127.0.0.1:$((base + n - 1))"; done
  echo "$b"
}

cluster_id() {
  mkdir -p "$state"
  if [ ! -f "$state/cluster.id" ]; then
    # Kafka's cluster ids are 16 random bytes, URL-safe base64 without padding.
    python3 -c 'import base64,uuid;print(base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("="))' \
      > "$state/cluster.id"
  fi
  cat "$state/cluster.id"
}

node() {
  local n=$1; shift
  case "$n" in 1|2|3) ;; *) echo "cluster.sh: node must be 1, 2 or 3, not $n" >&2; exit 2 ;; esac
  KAFKA_MODE=node KAFKA_NODE_ID=$n KAFKA_STATE_DIR="$state/node-$n" KAFKA_REMOTE_TIER_DIR="$state/remote-tier" \
    KAFKA_PORT=$((base + n - 1)) KAFKA_CONTROLLER_PORT=$((controller_base + n - 1)) \
    KAFKA_VOTERS="$(voters)" KAFKA_CLUSTER_ID="$(cluster_id)" KAFKA_HEAP=${KAFKA_HEAP:-512m} \
    "$here/kafka.sh" "$@"
}

case "${1:-}" in
  up)
    for n in $nodes; do node "$n" start; done
    for n in $nodes; do node "$n" wait >/dev/null; done
    echo "Kafka cluster is ready on $(bootstrap)." ;;
  # All at once: the last node alone cannot finish a controlled shutdown without a quorum.
  down)
    export KAFKA_STOP_SECONDS=20
    for n in $nodes; do node "$n" down & done
    wait ;;
  kill) node "${2:?usage: cluster.sh kill N}" kill ;;
  start) node "${2:?usage: cluster.sh start N}" start; node "$2" wait ;;
  status) for n in $nodes; do node "$n" status || exit 1; done ;;
  bootstrap) bootstrap ;;
  reset) "$0" down; rm -rf "$state"; echo "Kafka cluster data removed." ;;
  *) echo "usage: $0 up|down|kill N|start N|status|bootstrap|reset" >&2; exit 2 ;;
esac
