#!/usr/bin/env bash
# The queue is for embedding: its dependency tree (normal edges, all its features, which is
# also the tree of its embedding example) must not pull a database driver, a password hasher,
# a gRPC stack, a mailer or an OpenTelemetry SDK/exporter into the services that use it.
# Usage: scripts/check-deps.sh [package]   (default simplebank-queue; exits 1 on a hit)
set -euo pipefail
package="${1:-simplebank-queue}"
forbidden='^(sqlx|sqlx-[a-z-]+|argon2|tonic|tonic-[a-z-]+|prost|prost-[a-z-]+|lettre|opentelemetry_sdk|opentelemetry-otlp)$'
tree=$(${CARGO:-cargo} tree -e normal --all-features -p "$package" --prefix none --format '{p}')
found=$(awk '{print $1}' <<<"$tree" | grep -E "$forbidden" | sort -u || true)
if [[ -n "$found" ]]; then
	echo "check-deps: $package depends on crates an embedder must not get:" >&2
	echo "$found" | sed 's/^/  /' >&2
	echo "(see: cargo tree -e normal -p $package -i <crate>)" >&2
	exit 1
fi
echo "check-deps: $package pulls none of sqlx, argon2, tonic, prost, lettre, opentelemetry_sdk, opentelemetry-otlp"
