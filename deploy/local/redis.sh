#!/usr/bin/env bash
# Start/stop a throwaway redis-server on 127.0.0.1.
#
#   redis.sh start DIR   -> prints exactly one line "REDIS_URL=redis://127.0.0.1:<port>/0"
#                           (rediss:// with REDIS_TLS_DIR)
#   redis.sh stop DIR    -> stops the server whose pid is in DIR/redis.pid
#
# Env: REDIS_PORT pins the port (otherwise the port of the last start in DIR is
# reused, else a free one is picked); REDIS_PERSIST=1 turns on the append-only
# file in DIR, so data survives a stop/start on the same DIR. Chatter goes to stderr.
#
# Optional security, for the security tests and for trying settings by hand:
# - REDIS_TLS_DIR holding ca.crt, redis.crt and redis.key: TLS only (no plaintext port);
#   clients must present a certificate signed by ca.crt unless REDIS_TLS_AUTH_CLIENTS
#   says "optional" or "no".
# - REDIS_ACL_USER and REDIS_ACL_PASSWORD: that user gets every command and key, the
#   `default` user is switched off, so every connection must log in. The password goes
#   into DIR/acl.conf (mode 600) as a SHA-256 hash, never onto the command line.
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
    [[ $reply == +PONG* || $reply == -NOAUTH* ]]
)

# Up as soon as the server answers PING at all: NOAUTH also means it is listening.
tls_pong() {
  python3 - "$1" "$REDIS_TLS_DIR" <<'EOF'
import socket, ssl, sys
port, tls = int(sys.argv[1]), sys.argv[2]
context = ssl.create_default_context(cafile=f"{tls}/ca.crt")
context.check_hostname = False
context.load_cert_chain(f"{tls}/redis.crt", f"{tls}/redis.key")
with socket.create_connection(("127.0.0.1", port), timeout=1) as raw:
    with context.wrap_socket(raw) as conn:
        conn.sendall(b"PING\r\n")
        sys.exit(0 if conn.recv(64).startswith((b"+PONG", b"-NOAUTH")) else 1)
EOF
}
answers() {
  if [[ -n ${REDIS_TLS_DIR:-} ]]; then tls_pong "$1"; else pong "$1"; fi
}

# The certificate files must exist, or redis-server exits with a vaguer error.
check_tls_dir() {
  local file
  for file in ca.crt redis.crt redis.key; do
    [[ -f $REDIS_TLS_DIR/$file ]] || die "REDIS_TLS_DIR: no $REDIS_TLS_DIR/$file"
  done
}

# ACL file: the default user off, one user with every right and a hashed password.
write_acl() {
  [[ $REDIS_ACL_USER =~ ^[A-Za-z0-9._-]+$ ]] || die "REDIS_ACL_USER: use [A-Za-z0-9._-]"
  [[ -n ${REDIS_ACL_PASSWORD:-} ]] || die "REDIS_ACL_USER needs REDIS_ACL_PASSWORD"
  local hash
  hash="$(printf %s "$REDIS_ACL_PASSWORD" | sha256sum | cut -d' ' -f1)"
  (
    umask 077
    printf 'user default off\nuser %s on #%s ~* &* +@all\n' "$REDIS_ACL_USER" "$hash" \
      >"$DIR/acl.conf"
  )
}

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

  local persist=(--save '' --appendonly no) listen=(--port "$port") acl=() scheme=redis
  [[ ${REDIS_PERSIST:-0} == 1 ]] && persist=(--appendonly yes)
  if [[ -n ${REDIS_TLS_DIR:-} ]]; then
    REDIS_TLS_DIR="$(cd "$REDIS_TLS_DIR" && pwd)"
    check_tls_dir
    listen=(--port 0 --tls-port "$port" --tls-cert-file "$REDIS_TLS_DIR/redis.crt"
            --tls-key-file "$REDIS_TLS_DIR/redis.key" --tls-ca-cert-file "$REDIS_TLS_DIR/ca.crt"
            --tls-auth-clients "${REDIS_TLS_AUTH_CLIENTS:-yes}")
    scheme=rediss
  fi
  if [[ -n ${REDIS_ACL_USER:-} ]]; then
    write_acl
    acl=(--aclfile "$DIR/acl.conf")
  fi
  log "starting redis-server on $scheme://127.0.0.1:$port, log in $DIR/redis.log"
  # A user's state hash keeps values up to ~600 bytes (recent items, last list): listpack
  # encoding holds it in about half the memory of the hashtable that the default limit of
  # 64 bytes a value forces (docs/operations.md, "Redis memory").
  redis-server --bind 127.0.0.1 "${listen[@]}" --dir "$DIR" --daemonize no \
    --hash-max-listpack-value 1024 \
    --logfile '' "${persist[@]}" "${acl[@]}" </dev/null >"$DIR/redis.log" 2>&1 &
  local pid=$! t0=$SECONDS
  echo "$pid" >"$DIR/redis.pid"
  until answers "$port" 2>/dev/null; do
    if ! alive "$pid" || ((SECONDS - t0 >= 30)); then
      tail -n 20 "$DIR/redis.log" >&2
      stop
      die "redis-server did not come up (see $DIR/redis.log)"
    fi
    sleep 0.1
  done
  log "redis up, pid $pid"
  echo "REDIS_URL=$scheme://127.0.0.1:$port/0"
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
