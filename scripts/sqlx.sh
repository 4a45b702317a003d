#!/usr/bin/env bash
# The offline query data in .sqlx/ (what `sqlx::query!` checks SQL against when building
# without a database).
#
#   scripts/sqlx.sh prepare   rewrite .sqlx/ from the queries in the code (commit the result)
#   scripts/sqlx.sh check     fail if .sqlx/ is stale or a query no longer fits the migrations
#
# Both run against a scratch database on DB_SOURCE's server, created and migrated from
# migrations/ for the run and dropped after it: never the development database, whose schema
# may lag behind or run ahead of the checkout. Needs the pinned sqlx-cli (`make tools`).
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
SQLX=$ROOT/.local/bin/sqlx
CARGO_SQLX=$ROOT/.local/bin/cargo-sqlx
# One scratch database per checkout, so two checkouts checking at once do not collide.
CHECKOUT_ID=$(printf '%s' "$ROOT" | sha256sum | cut -c1-12)

die() { printf 'sqlx: error: %s\n' "$*" >&2; exit 1; }

mode=${1:-}
case "$mode" in
  prepare) check=() ;;
  check) check=(--check) ;;
  *) die "usage: scripts/sqlx.sh prepare|check" ;;
esac
[ -x "$SQLX" ] && [ -x "$CARGO_SQLX" ] ||
  die "sqlx-cli is not installed in .local/bin: run make tools"

# Variables from the environment win; app.env fills the gaps; then the built-in default.
if [ -z "${DB_SOURCE:-}" ] && [ -f app.env ]; then
  DB_SOURCE=$(sed -n 's/^DB_SOURCE=//p' app.env | tail -n 1)
fi
DB_SOURCE=${DB_SOURCE:-postgres://postgres@127.0.0.1:5432/simple_bank}

# postgres://user:pass@host:port/db?query -> the same server and options, the scratch database.
url=$DB_SOURCE
query=""
case "$url" in *\?*) query="?${url#*\?}"; url=${url%%\?*} ;; esac
scheme=${url%%://*}
rest=${url#*://}
authority=${rest%%/*}
DATABASE_URL="${scheme}://${authority}/simplebank_sqlx_${CHECKOUT_ID}${query}"
export DATABASE_URL

drop() { "$SQLX" database drop -y >/dev/null 2>&1 || true; }
trap drop EXIT
drop
"$SQLX" database create
"$SQLX" migrate run --source migrations >/dev/null
# sqlx-cli runs `cargo check` with the macros online (it clears SQLX_OFFLINE itself).
PATH="$ROOT/.local/bin:$PATH" cargo sqlx prepare --workspace "${check[@]}"
