#!/usr/bin/env bash
# KAT's whole test run, as CI does it (`.ci/run` calls this):
#   1. installs the programs the tests use (scripts/install-deps.sh --for-tests),
#   2. checks formatting and lints (rustfmt, clippy with -D warnings),
#   3. builds everything, the fuzz targets included,
#   4. runs every test tier with cargo nextest (cargo test when nextest is missing).
# Tests that need a program the machine lacks skip with a printed reason.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh --for-tests

echo "== rustfmt"
cargo fmt --all -- --check

echo "== clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "== build (fuzz targets included)"
cargo build --workspace --all-targets --locked
cargo build -p kat-proto-fuzz --bins --locked

echo "== tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast
else
  echo "cargo-nextest not found; running cargo test"
  cargo test --workspace --locked --no-fail-fast
fi
