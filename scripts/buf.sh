#!/usr/bin/env bash
# The API contract of proto/, with buf (the npm package @bufbuild/buf, pinned, installed into
# .local/buf by `make tools`). Configuration: proto/buf.yaml.
#
#   scripts/buf.sh lint        buf lint
#   scripts/buf.sh breaking    buf breaking against the API this checkout must stay compatible
#                              with (see "Which API" below)
#   scripts/buf.sh selftest    shows the breaking check failing a renumbered and a removed
#                              field, on a branch and on main itself, in a scratch repository
#   scripts/buf.sh all         lint, breaking, selftest (what `make lint` runs)
#
# Which API: "the last commit of main that changed proto/", read so that the check means
# something wherever it runs:
# - on a branch with commits of its own: the API of main where the branch left it (the merge
#   base; its proto/ is that of the last commit of main, up to there, that changed proto/);
# - on main itself, or a branch with nothing of its own: that last commit IS the checkout, so
#   comparing with it would pass anything. The check compares with the API before the newest
#   change instead (the first parent of the newest commit that changed proto/), or with HEAD
#   when proto/ has uncommitted changes. So a merged change that renumbers or removes a field
#   fails on main too. Keep each proto change compatible with the commit before it (a branch
#   that adds a service and then reshapes it should squash that into one commit).
# BUF_AGAINST=<git revision> overrides the choice.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
BUF=${BUF:-$ROOT/.local/buf/node_modules/.bin/buf}

die() { printf 'buf: error: %s\n' "$*" >&2; exit 1; }

[ -x "$BUF" ] || die "buf is not installed in .local/buf: run make tools"

lint() {
  "$BUF" lint proto
  echo "buf: lint passed"
}

# The first of main and origin/main that names a commit.
main_ref() {
  local ref
  for ref in main origin/main; do
    if git rev-parse --verify --quiet "$ref^{commit}" >/dev/null; then
      echo "$ref"
      return
    fi
  done
}

# Prints "<revision> <why>" of the API to compare with, or nothing when there is none.
against() {
  if [ -n "${BUF_AGAINST:-}" ]; then
    echo "$BUF_AGAINST BUF_AGAINST"
    return
  fi
  local head main base newest
  head=$(git rev-parse HEAD)
  main=$(main_ref)
  if [ -n "$main" ] && base=$(git merge-base HEAD "$main") && [ "$base" != "$head" ]; then
    echo "$base the merge base with $main"
    return
  fi
  if [ -n "$(git status --porcelain -- proto)" ]; then
    echo "HEAD HEAD (proto/ has uncommitted changes)"
    return
  fi
  newest=$(git log -1 --format=%H HEAD -- proto)
  if [ -n "$newest" ] && git rev-parse --verify --quiet "$newest^" >/dev/null; then
    echo "$newest^ the API before the newest change of proto/ ($(git log -1 --format='%h %s' "$newest" | cut -c1-60))"
  fi
}

# buf breaking of ./proto against the proto/ of revision $1.
breaking_against() {
  local rev=$1 why=$2 scratch
  scratch=$(mktemp -d)
  if ! git archive "$rev" proto 2>/dev/null | tar -x -C "$scratch" 2>/dev/null ||
    [ ! -d "$scratch/proto" ]; then
    rm -rf "$scratch"
    echo "buf: $why ($rev) has no proto/: nothing to stay compatible with"
    return 0
  fi
  echo "buf: breaking: proto/ against $why ($(git rev-parse --short "$rev"))"
  local status=0
  "$BUF" breaking proto --against "$scratch/proto" || status=$?
  rm -rf "$scratch"
  [ "$status" -eq 0 ] || return "$status"
  echo "buf: no breaking change"
}

breaking() {
  local found rev why
  found=$(against)
  if [ -z "$found" ]; then
    echo "buf: no earlier API in this repository: breaking check skipped"
    return 0
  fi
  rev=${found%% *}
  why=${found#* }
  breaking_against "$rev" "$why"
}

# A scratch repository with this proto/ and script: a renumbered and a removed field must fail
# the breaking check on main (after they are committed) and on a branch; an added field passes.
selftest() {
  local scratch status=0
  scratch=$(mktemp -d)
  mkdir -p "$scratch/scripts"
  cp -R proto "$scratch/"
  cp scripts/buf.sh "$scratch/scripts/"
  local file=proto/simplebank/v1/simple_bank.proto
  (
    set -e
    cd "$scratch"
    git init --quiet --initial-branch=main
    git -c user.name=selftest -c user.email=selftest@localhost commit --quiet --allow-empty -m root
    git add -A
    commit() { git -c user.name=selftest -c user.email=selftest@localhost commit --quiet -am "$1"; }
    commit "the API"
    expect() {
      local want=$1 what=$2 out
      if out=$(BUF="$BUF" BUF_AGAINST= scripts/buf.sh breaking 2>&1); then got=pass; else got=fail; fi
      if [ "$got" != "$want" ]; then
        printf '%s\n' "$out" >&2
        echo "buf: selftest: $what: expected the check to $want, it did $got" >&2
        exit 1
      fi
      echo "buf: selftest: $what: $want, as it must"
    }
    # A renumbered field, committed on main: compared with the API before it.
    sed -i 's/string full_name = 2;/string full_name = 7;/' "$file"
    grep -q 'full_name = 7;' "$file"
    expect fail "renumbered field, uncommitted on main"
    commit "renumber full_name"
    expect fail "renumbered field, committed on main"
    git reset --quiet --hard HEAD~1
    expect pass "main as it was"
    # On a branch: compared with the merge base, whatever the branch did before.
    git checkout --quiet -b feature
    sed -i '/^  string email = 3;$/d' "$file"
    commit "remove a field"
    expect fail "removed field, on a branch"
    git reset --quiet --hard main
    sed -i 's/^  bool is_email_verified = 6;$/&\n  string nickname = 7;/' "$file"
    commit "add a field"
    expect pass "added field, on a branch"
  ) || status=$?
  rm -rf "$scratch"
  return "$status"
}

case "${1:-}" in
  lint) lint ;;
  breaking) breaking ;;
  selftest) selftest ;;
  all) lint; breaking; selftest ;;
  *) die "usage: scripts/buf.sh lint|breaking|selftest|all" ;;
esac
