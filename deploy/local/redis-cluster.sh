#!/usr/bin/env bash
# Start/stop a throwaway Redis Cluster on 127.0.0.1: three masters, each with one replica.
#
#   redis-cluster.sh start DIR -> prints exactly one line
#                                 "REDIS_URL=redis+cluster://127.0.0.1:<port of a node>"
#   redis-cluster.sh stop DIR  -> stops every node whose pid is in DIR/node-*/redis.pid
#
# Six redis-server processes with cluster-enabled yes, one directory each (DIR/node-1 ..
# DIR/node-6: its port, bus port, pid, log and nodes.conf), joined with
# `redis-cli --cluster create ... --cluster-replicas 1`. The start returns once every
# node reports cluster_state:ok and every replica's link to its master is up, so a
# client (or a CLUSTER FAILOVER) can rely on the cluster at once.
#
# A start on a DIR that held a cluster before reuses its ports and nodes.conf: the same
# cluster comes back (with its data when REDIS_PERSIST=1 turned on the append-only file
# in each node's directory), as after an outage of every node. Chatter goes to stderr.
#
# Env: REDIS_CLUSTER_NODE_TIMEOUT_MS (default 2000): how long a node may be silent before
# the others count it as failing and promote its replica.
set -euo pipefail

NODES=6
log() { echo "redis-cluster.sh: $*" >&2; }
die() { log "$*"; exit 1; }
# Distinct free ports, bound all at once so that none is handed out twice.
free_ports() {
  python3 - "$1" <<'EOF'
import socket, sys
sockets = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in sockets:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in sockets))
EOF
}
# A killed child of an exited shell may linger as a zombie until reaped: count it as dead.
alive() { local st; st="$(ps -o stat= -p "$1" 2>/dev/null)" && [[ $st != Z* ]]; }
cli() { redis-cli -h 127.0.0.1 -p "$@"; }
port_of() { cat "$DIR/node-$1/redis.port"; }

# Every node says cluster_state:ok and knows all the others; every replica is in sync.
settled() {
  local n port info
  for n in $(seq "$NODES"); do
    port="$(port_of "$n")"
    info="$(cli "$port" cluster info 2>/dev/null)" || return 1
    [[ $info == *cluster_state:ok* && $info == *cluster_known_nodes:$NODES* ]] || return 1
    info="$(cli "$port" info replication 2>/dev/null)" || return 1
    if [[ $info == *role:slave* ]]; then
      [[ $info == *master_link_status:up* ]] || return 1
    fi
  done
}

start_node() {
  local n=$1 port=$2 bus=$3 node="$DIR/node-$1"
  mkdir -p "$node"
  echo "$port" >"$node/redis.port"
  echo "$bus" >"$node/redis.busport"
  local persist=(--save '' --appendonly no)
  [[ ${REDIS_PERSIST:-0} == 1 ]] && persist=(--save '' --appendonly yes)
  redis-server --bind 127.0.0.1 --port "$port" --cluster-enabled yes \
    --cluster-config-file nodes.conf --cluster-port "$bus" \
    --cluster-node-timeout "${REDIS_CLUSTER_NODE_TIMEOUT_MS:-2000}" \
    --dir "$node" --daemonize no --logfile '' "${persist[@]}" \
    --hash-max-listpack-value 1024 \
    </dev/null >"$node/redis.log" 2>&1 &
  echo $! >"$node/redis.pid"
}

start() {
  mkdir -p "$DIR"
  DIR="$(cd "$DIR" && pwd)"
  command -v redis-server >/dev/null && command -v redis-cli >/dev/null ||
    die "needs redis-server and redis-cli (apt-get install redis-server, or make tools)"
  local n pid
  for n in $(seq "$NODES"); do
    if [[ -f $DIR/node-$n/redis.pid ]] && alive "$(cat "$DIR/node-$n/redis.pid")"; then
      die "node $n already running with pid $(cat "$DIR/node-$n/redis.pid")"
    fi
  done
  local again=0 ports
  [[ -f $DIR/node-1/nodes.conf ]] && again=1
  if ((again)); then
    ports=()
    for n in $(seq "$NODES"); do ports+=("$(port_of "$n")" "$(cat "$DIR/node-$n/redis.busport")"); done
  else
    read -r -a ports <<<"$(free_ports $((2 * NODES)))"
  fi
  for n in $(seq "$NODES"); do
    start_node "$n" "${ports[2 * n - 2]}" "${ports[2 * n - 1]}"
  done
  local t0=$SECONDS
  for n in $(seq "$NODES"); do
    pid="$(cat "$DIR/node-$n/redis.pid")"
    until cli "$(port_of "$n")" ping >/dev/null 2>&1; do
      if ! alive "$pid" || ((SECONDS - t0 >= 30)); then
        tail -n 20 "$DIR/node-$n/redis.log" >&2
        stop
        die "node $n did not come up (see $DIR/node-$n/redis.log)"
      fi
      sleep 0.1
    done
  done
  if ((again)); then
    log "nodes restarted on their ports and nodes.conf; waiting for the cluster"
  else
    local addresses=()
    for n in $(seq "$NODES"); do addresses+=("127.0.0.1:$(port_of "$n")"); done
    log "joining ${addresses[*]}"
    redis-cli --cluster create "${addresses[@]}" --cluster-replicas 1 --cluster-yes >&2 ||
      { stop; die "redis-cli --cluster create failed"; }
  fi
  t0=$SECONDS
  until settled; do
    if ((SECONDS - t0 >= 60)); then
      for n in $(seq "$NODES"); do cli "$(port_of "$n")" cluster info >&2 || true; done
      stop
      die "the cluster did not reach cluster_state:ok with every replica in sync in 60 s"
    fi
    sleep 0.2
  done
  log "cluster up: ${NODES} nodes, ports $(for n in $(seq "$NODES"); do printf '%s ' "$(port_of "$n")"; done)"
  echo "REDIS_URL=redis+cluster://127.0.0.1:$(port_of 1)"
}

stop() {
  local n pid pids=()
  for n in $(seq "$NODES"); do
    [[ -f $DIR/node-$n/redis.pid ]] || continue
    pid="$(cat "$DIR/node-$n/redis.pid")"
    # Guard against a recycled pid: only signal our redis-server.
    if alive "$pid" && grep -qa redis-server "/proc/$pid/cmdline"; then
      kill -TERM "$pid"
      pids+=("$pid")
    fi
    rm -f "$DIR/node-$n/redis.pid"
  done
  for pid in "${pids[@]}"; do
    for _ in $(seq 100); do alive "$pid" || break; sleep 0.1; done
    alive "$pid" && { log "redis $pid ignored TERM for 10 s, killing"; kill -KILL "$pid"; }
  done
  return 0
}

[[ $# -eq 2 && ($1 == start || $1 == stop) ]] || die "usage: $0 start|stop DIR"
DIR="$2"
"$1"
