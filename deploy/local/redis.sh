#!/usr/bin/env bash
# Start/stop a throwaway redis-server on 127.0.0.1.
#
#   redis.sh start DIR   -> prints exactly one line "REDIS_URL=redis://127.0.0.1:<port>/0"
#   redis.sh stop DIR    -> stops the server whose pid is in DIR/redis.pid
#
# Env: REDIS_PORT pins the port (otherwise the port of the last start in DIR is
# reused, else a free one is picked); REDIS_PERSIST=1 turns on the append-only
# file in DIR, so data survives a stop/start on the same DIR. Chatter goes to stderr.
set -euo pipefail

log() { echo "redis.sh: $*" >&2; }
die() { log "$*"; exit 1; }
free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
# A killed child of an exited shell may linger as a zombie until reaped: count it as dead.
alive() { local st; st="$(ps -o stat= -p "$1" 2>/dev/null)" && [[ $st != Z* ]]; }
# PING over bash's /dev/tcp: needs no redis-cli and no Python package.
pong() (
  exec 3<>"/dev/tcp/127.0.0.1/$1" && printf 'PING\r\n' >&3 && read -r -t 1 reply <&3 &&
    [[ $reply == +PONG* ]]
)

start() {
  mkdir -p "$DIR"
  DIR="$(cd "$DIR" && pwd)"
  if [[ -f $DIR/redis.pid ]] && alive "$(cat "$DIR/redis.pid")"; then
    die "already running with pid $(cat "$DIR/redis.pid")"
  fi
  if ! command -v redis-server >/dev/null; then
    log "installing redis-server with apt-get"
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-server >&2
  fi
  local port="${REDIS_PORT:-$(cat "$DIR/redis.port" 2>/dev/null || true)}"
  [[ -n $port ]] || port="$(free_port)"
  echo "$port" >"$DIR/redis.port"

  local persist=(--save '' --appendonly no)
  [[ ${REDIS_PERSIST:-0} == 1 ]] && persist=(--appendonly yes)
  log "starting redis-server on 127.0.0.1:$port, log in $DIR/redis.log"
  redis-server --bind 127.0.0.1 --port "$port" --dir "$DIR" --daemonize no \
    --logfile '' "${persist[@]}" </dev/null >"$DIR/redis.log" 2>&1 &
  local pid=$! t0=$SECONDS
  echo "$pid" >"$DIR/redis.pid"
  until pong "$port" 2>/dev/null; do
    if ! alive "$pid" || ((SECONDS - t0 >= 30)); then
      tail -n 20 "$DIR/redis.log" >&2
      stop
      die "redis-server did not come up (see $DIR/redis.log)"
    fi
    sleep 0.1
  done
  log "redis up, pid $pid"
  echo "REDIS_URL=redis://127.0.0.1:$port/0"
}

stop() {
  [[ -f $DIR/redis.pid ]] || { log "no $DIR/redis.pid, nothing to stop"; return 0; }
  local pid
  pid="$(cat "$DIR/redis.pid")"
  # Guard against a recycled pid: only signal our redis-server.
  if alive "$pid" && grep -qa redis-server "/proc/$pid/cmdline"; then
    kill -TERM "$pid"
    for _ in $(seq 100); do alive "$pid" || break; sleep 0.1; done
    alive "$pid" && { log "redis $pid ignored TERM for 10 s, killing"; kill -KILL "$pid"; }
  fi
  rm -f "$DIR/redis.pid"
}

[[ $# -eq 2 && ($1 == start || $1 == stop) ]] || die "usage: $0 start|stop DIR"
DIR="$2"
"$1"
