#!/usr/bin/env bash
# Runs the server and one worker in the foreground; Ctrl-C (or SIGTERM) stops both gracefully.
# Each runs in a session of its own, so Ctrl-C reaches only this script, which forwards one
# SIGTERM to each (the worker treats a second signal as "exit now").
set -uo pipefail
cd "$(dirname "$0")/.."

setsid ./target/debug/simplebank-server &
server=$!
setsid ./target/debug/simplebank-worker &
worker=$!

stop() {
  kill -TERM "$server" "$worker" 2>/dev/null
  wait "$server" "$worker"
  exit 0
}
trap stop INT TERM

# If either exits on its own, stop the other and report the failure.
wait -n "$server" "$worker"
status=$?
kill -TERM "$server" "$worker" 2>/dev/null
wait
exit "$status"
