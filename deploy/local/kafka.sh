#!/usr/bin/env bash
# Start/stop a throwaway single-node Apache Kafka (KRaft, broker+controller) on 127.0.0.1.
#
#   kafka.sh start DIR   -> prints exactly one line "BOOTSTRAP=127.0.0.1:<port>" on stdout
#   kafka.sh stop DIR    -> stops the broker whose pid is in DIR/kafka.pid
#
# Env: KAFKA_PORT pins the broker port (otherwise the port from an existing
# DIR/server.properties is reused, else a free one is picked); KAFKA_HEAP_OPTS
# overrides the small default heap. Restarting on the same DIR keeps the data.
# KAFKA_SASL_USERS="alice:alice-secret[,bob:bob-secret]" makes the one client listener
# SASL_PLAINTEXT with mechanism PLAIN (also used between brokers, by a user of its own)
# that accepts exactly these users; the controller keeps a PLAINTEXT port of its own.
# Names and passwords are limited to [A-Za-z0-9._-] so they can sit in the JAAS line.
# The broker jars come from Maven Central once (kafka/pom.xml) and are cached
# in deploy/local/.cache/kafka-<version>/. Everything but the result goes to stderr.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
POM="$HERE/kafka/pom.xml"
VERSION="$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$POM")"
CACHE="$HERE/.cache/kafka-$VERSION"
PY="$HERE/../../.venv/bin/python"
[[ -x $PY ]] || PY=python3

log() { echo "kafka.sh: $*" >&2; }
die() { log "$*"; exit 1; }
free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
# A killed child of an exited shell may linger as a zombie until reaped: count it as dead.
alive() { local st; st="$(ps -o stat= -p "$1" 2>/dev/null)" && [[ $st != Z* ]]; }
prop() { sed -n "s/^$1=//p" "$DIR/server.properties" 2>/dev/null || true; }

fetch_jars() {
  [[ -f $CACHE/.complete ]] && { log "using cached jars in $CACHE"; return; }
  log "resolving Kafka $VERSION jars with Maven (first run only)"
  mkdir -p "$HERE/.cache"
  local tmp
  tmp="$(mktemp -d "$HERE/.cache/kafka-$VERSION.tmp.XXXXXX")"
  mvn -q -B -f "$POM" dependency:copy-dependencies -DoutputDirectory="$tmp" >"$tmp.log" 2>&1 \
    || { cat "$tmp.log" >&2; rm -rf "$tmp" "$tmp.log"; die "maven failed"; }
  rm -f "$tmp.log"
  touch "$tmp/.complete"
  # Rename into place so a concurrent start never sees a half-filled cache.
  [[ -f $CACHE/.complete ]] || rm -rf "$CACHE"
  mv -T "$tmp" "$CACHE" 2>/dev/null || rm -rf "$tmp"
}

# The JAAS line of the PLAIN listener: the broker's own login, then one user_<name> per user.
sasl_jaas() {
  local users="user_broker=\"$1\"" pair name password pairs
  IFS=, read -ra pairs <<<"$KAFKA_SASL_USERS"
  for pair in "${pairs[@]}"; do
    [[ $pair =~ ^([A-Za-z0-9._-]+):([A-Za-z0-9._-]+)$ ]] \
      || die "KAFKA_SASL_USERS: expected name:password[,name:password...] of [A-Za-z0-9._-]"
    name="${BASH_REMATCH[1]}" password="${BASH_REMATCH[2]}"
    users+=" user_$name=\"$password\""
  done
  echo "org.apache.kafka.common.security.plain.PlainLoginModule required" \
    "username=\"broker\" password=\"$1\" $users;"
}

# Listener lines: PLAINTEXT by default; SASL_PLAINTEXT (PLAIN) with KAFKA_SASL_USERS.
write_listeners() {
  local port="$1" cport="$2" name=PLAINTEXT
  [[ -n ${KAFKA_SASL_USERS:-} ]] && name=SASL_PLAINTEXT
  echo "listeners=$name://127.0.0.1:$port,CONTROLLER://127.0.0.1:$cport"
  echo "advertised.listeners=$name://127.0.0.1:$port"
  echo "listener.security.protocol.map=$name:$name,CONTROLLER:PLAINTEXT"
  echo "controller.listener.names=CONTROLLER"
  echo "inter.broker.listener.name=$name"
  [[ $name == SASL_PLAINTEXT ]] || return 0
  local jaas
  jaas="$(sasl_jaas "$(python3 -c 'import secrets; print(secrets.token_urlsafe(18))')")" || exit 1
  echo "sasl.enabled.mechanisms=PLAIN"
  echo "sasl.mechanism.inter.broker.protocol=PLAIN"
  echo "listener.name.sasl_plaintext.plain.sasl.jaas.config=$jaas"
}

write_config() {
  local port="$1" cport="$2" listeners
  listeners="$(write_listeners "$port" "$cport")"
  cat >"$DIR/server.properties" <<EOF
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$cport
$listeners
log.dirs=$DIR/data
offsets.topic.replication.factor=1
offsets.topic.num.partitions=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
share.coordinator.state.topic.num.partitions=1
min.insync.replicas=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=true
num.partitions=4
EOF
  cat >"$DIR/log4j2.properties" <<'EOF'
appender.out.type=Console
appender.out.name=out
appender.out.layout.type=PatternLayout
appender.out.layout.pattern=[%d] %p %m (%c)%n
rootLogger.level=INFO
rootLogger.appenderRef.out.ref=out
EOF
}

# Ready when a client (the first SASL user, if any) can read metadata.
broker_ready() {
  if "$PY" -c 'import confluent_kafka' 2>/dev/null; then
    "$PY" -c 'import sys; from confluent_kafka.admin import AdminClient
config = {"bootstrap.servers": sys.argv[1]}
if sys.argv[2]:
    user, _, password = sys.argv[2].split(",")[0].partition(":")
    config |= {"security.protocol": "SASL_PLAINTEXT", "sasl.mechanism": "PLAIN",
               "sasl.username": user, "sasl.password": password}
AdminClient(config).list_topics(timeout=1)' "$1" "${KAFKA_SASL_USERS:-}" 2>/dev/null
  else
    grep -q 'Kafka Server started' "$DIR/kafka.log" && (exec 3<>"/dev/tcp/${1%:*}/${1#*:}") 2>/dev/null
  fi
}

start() {
  mkdir -p "$DIR"
  DIR="$(cd "$DIR" && pwd)"
  if [[ -f $DIR/kafka.pid ]] && alive "$(cat "$DIR/kafka.pid")"; then
    die "already running with pid $(cat "$DIR/kafka.pid")"
  fi
  fetch_jars
  local port cport
  port="${KAFKA_PORT:-$(prop listeners | sed -n 's/^[A-Z_]*:\/\/127.0.0.1:\([0-9]*\),.*/\1/p')}"
  cport="$(prop controller.quorum.voters | sed 's/.*://')"
  [[ -n $port ]] || port="$(free_port)"
  [[ -n $cport ]] || cport="$(free_port)"
  write_config "$port" "$cport"

  local heap java
  read -ra heap <<<"${KAFKA_HEAP_OPTS:--Xmx512m -Xms256m}"
  java=(java "${heap[@]}" -XX:+UseG1GC -Djava.awt.headless=true
        "-Dlog4j2.configurationFile=$DIR/log4j2.properties" -cp "$CACHE/*")
  if [[ ! -f $DIR/data/meta.properties ]]; then
    local uuid
    uuid="$(python3 -c 'import base64, uuid
while (u := base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")).startswith("-"): pass
print(u)')"
    log "formatting $DIR/data with cluster id $uuid"
    "${java[@]}" kafka.tools.StorageTool format -t "$uuid" -c "$DIR/server.properties" >"$DIR/format.log" 2>&1 \
      || { cat "$DIR/format.log" >&2; die "storage format failed"; }
  fi

  log "starting broker on 127.0.0.1:$port (controller $cport), log in $DIR/kafka.log"
  "${java[@]}" kafka.Kafka "$DIR/server.properties" </dev/null >"$DIR/kafka.log" 2>&1 &
  local pid=$! t0=$SECONDS
  echo "$pid" >"$DIR/kafka.pid"
  until broker_ready "127.0.0.1:$port"; do
    if ! alive "$pid" || ((SECONDS - t0 >= 90)); then
      tail -n 40 "$DIR/kafka.log" >&2
      stop
      die "broker did not come up (see $DIR/kafka.log)"
    fi
    sleep 0.5
  done
  log "broker up after $((SECONDS - t0)) s, pid $pid"
  echo "BOOTSTRAP=127.0.0.1:$port"
}

stop() {
  [[ -f $DIR/kafka.pid ]] || { log "no $DIR/kafka.pid, nothing to stop"; return 0; }
  local pid
  pid="$(cat "$DIR/kafka.pid")"
  # Guard against a recycled pid: only signal our broker's java process.
  if alive "$pid" && grep -qa kafka.Kafka "/proc/$pid/cmdline"; then
    kill -TERM "$pid"
    for _ in $(seq 40); do alive "$pid" || break; sleep 0.5; done
    alive "$pid" && { log "broker $pid ignored TERM for 20 s, killing"; kill -KILL "$pid"; }
  fi
  rm -f "$DIR/kafka.pid"
}

[[ $# -eq 2 && ($1 == start || $1 == stop) ]] || die "usage: $0 start|stop DIR"
DIR="$2"
"$1"
