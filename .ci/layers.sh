#!/usr/bin/env bash
# The layers have no cycles: cargo-modules writes the library's dependency graph, and
# .ci/layers.py folds it onto the top-level modules (error, domain, store, core, http,
# config, server) and fails on a cycle. Installs cargo-modules when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
CARGO_MODULES_VERSION=0.27.0
if ! cargo modules --version 2>/dev/null | grep -qF "$CARGO_MODULES_VERSION"; then
  echo "== layers: installing cargo-modules $CARGO_MODULES_VERSION"
  cargo install --quiet --locked cargo-modules --version "$CARGO_MODULES_VERSION"
fi
graph=$(mktemp)
trap 'rm -f "$graph"' EXIT
cargo modules dependencies --lib --no-externs --no-sysroot --no-owns >"$graph"
python3 .ci/layers.py <"$graph"
