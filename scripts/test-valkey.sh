#!/usr/bin/env bash
# The end-to-end and fault suites once more, against Valkey instead of Redis: a project-local
# valkey-server (.local/bin, from `make tools`) on a free loopback port, with AOF and
# noeviction as services.sh runs Redis; the tests' own servers (RedisServer) are Valkey too
# (REDIS_SERVER). The server is stopped and its data folder removed however the tests end.
#
#   scripts/test-valkey.sh [cargo test filters...]   (default: the suites below)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
CARGO=${CARGO:-cargo}
VALKEY=$ROOT/.local/bin/valkey-server
[ -x "$VALKEY" ] || { echo "test-valkey: $VALKEY is missing: run make tools" >&2; exit 1; }

port=${VALKEY_PORT:-$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
dir=$ROOT/.local/valkey-$port
mkdir -p "$dir"
stop() {
  if [ -f "$dir/valkey.pid" ]; then
    kill "$(cat "$dir/valkey.pid")" 2>/dev/null || true
    for _ in $(seq 1 50); do [ -f "$dir/valkey.pid" ] || break; sleep 0.1; done
  fi
  rm -rf "$dir"
}
trap stop EXIT
"$VALKEY" --daemonize yes --bind 127.0.0.1 --port "$port" --dir "$dir" \
  --appendonly yes --appendfsync everysec --maxmemory-policy noeviction --save "" \
  --pidfile "$dir/valkey.pid" --logfile "$dir/valkey.log"
for _ in $(seq 1 50); do
  timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$port" 2>/dev/null && break
  sleep 0.1
done
echo "test-valkey: $("$VALKEY" --version | cut -d' ' -f1-3) on 127.0.0.1:$port"

export REDIS_ADDRESS=127.0.0.1:$port REDIS_SERVER=$VALKEY
started=$(date +%s)
# The sign-up end to end (binaries and in-process, as the ACL user), and the worker's fault
# and failure paths (SIGKILL, restart with AOF, SIGTERM, retries, dead letters, takeover).
# One cargo call over the workspace: the features resolve as in `make test`'s run, so nothing
# is rebuilt. (`acl::` is the worker's module and matches the server's `redis_acl::` too.)
"$CARGO" test --workspace --test it -- e2e:: pipeline:: acl:: faults:: retries:: reclaim:: delayed::
echo "test-valkey: the Valkey pass took $(($(date +%s) - started)) s"
