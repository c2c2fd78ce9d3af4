#!/usr/bin/env bash
# Runs a command with PostgreSQL and Redis answering. Uses the ones at the usual
# addresses when they answer; otherwise starts throwaway servers from the installed
# binaries (removed afterwards); stops with one line naming the package to install when
# there are none. Exports TOOLPLANE_TEST_PG and TOOLPLANE_TEST_REDIS for the tests.
set -euo pipefail

PG_URL=${TOOLPLANE_TEST_PG:-postgres://postgres@127.0.0.1:5432/postgres}
REDIS_URL=${TOOLPLANE_TEST_REDIS:-redis://127.0.0.1:6379}
tmp=""
pg_dir=""
redis_pid=""

cleanup() {
  if [ -n "$pg_dir" ]; then
    run_as_pg "$(pg_bin pg_ctl)" -D "$pg_dir" -m immediate stop >/dev/null 2>&1 || true
  fi
  if [ -n "$redis_pid" ]; then kill "$redis_pid" 2>/dev/null || true; fi
  if [ -n "$tmp" ]; then rm -rf "$tmp"; fi
}
trap cleanup EXIT

port_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }
host_port() { # URL -> "host port"
  local rest=${1#*://}; rest=${rest#*@}; rest=${rest%%/*}
  echo "${rest%%:*} ${rest##*:}"
}
pg_bin() { ls -d /usr/lib/postgresql/*/bin/"$1" 2>/dev/null | sort -V | tail -1; }
run_as_pg() {
  if [ "$(id -u)" = 0 ]; then su postgres -s /bin/sh -c "$(printf '%q ' "$@")"; else "$@"; fi
}
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

read -r pg_host pg_port <<<"$(host_port "$PG_URL")"
if ! port_open "$pg_host" "$pg_port"; then
  if [ -z "$(pg_bin initdb)" ]; then
    echo "PostgreSQL is not answering at $pg_host:$pg_port and no server is installed: apt-get install postgresql" >&2
    exit 1
  fi
  tmp=$(mktemp -d)
  chmod 755 "$tmp"
  pg_dir="$tmp/pg"
  mkdir -p "$pg_dir"
  if [ "$(id -u)" = 0 ]; then chown postgres "$pg_dir"; fi
  port=$(free_port)
  run_as_pg "$(pg_bin initdb)" -D "$pg_dir" -U postgres --auth=trust >/dev/null
  # TLS as Debian's own clusters have it (the snakeoil certificate of ssl-cert), so the
  # tests of sslmode run against this server too.
  ssl_opts=""
  if [ -r /etc/ssl/certs/ssl-cert-snakeoil.pem ] && run_as_pg test -r /etc/ssl/private/ssl-cert-snakeoil.key; then
    ssl_opts="-c ssl=on -c ssl_cert_file=/etc/ssl/certs/ssl-cert-snakeoil.pem -c ssl_key_file=/etc/ssl/private/ssl-cert-snakeoil.key"
  fi
  run_as_pg "$(pg_bin pg_ctl)" -D "$pg_dir" -w -l "$pg_dir/log" \
    -o "-p $port -k $pg_dir -c listen_addresses=127.0.0.1 -c max_connections=300 -c fsync=off $ssl_opts" start >/dev/null
  PG_URL="postgres://postgres@127.0.0.1:$port/postgres"
  echo "started a throwaway PostgreSQL on port $port" >&2
fi

read -r redis_host redis_port <<<"$(host_port "$REDIS_URL")"
if ! port_open "$redis_host" "$redis_port"; then
  if ! command -v redis-server >/dev/null; then
    echo "Redis is not answering at $redis_host:$redis_port and no server is installed: apt-get install redis-server" >&2
    exit 1
  fi
  [ -n "$tmp" ] || tmp=$(mktemp -d)
  port=$(free_port)
  redis-server --bind 127.0.0.1 --port "$port" --save "" --appendonly no --dir "$tmp" >"$tmp/redis.log" 2>&1 &
  redis_pid=$!
  for _ in $(seq 1 50); do port_open 127.0.0.1 "$port" && break; sleep 0.1; done
  REDIS_URL="redis://127.0.0.1:$port"
  echo "started a throwaway Redis on port $port" >&2
fi

export TOOLPLANE_TEST_PG="$PG_URL" TOOLPLANE_TEST_REDIS="$REDIS_URL"
"$@"
