#!/usr/bin/env bash
# Runs capstan's whole test suite: formatting and lints, unit tests, the store suite on SQLite and
# PostgreSQL, the container executor on Podman, and the end-to-end tests of the `capstan` command.
#
# PostgreSQL: set CAPSTAN_TEST_POSTGRES_URL to an admin URL, or let this script start a local
# server with scripts/pg-test-server.sh (needs root or the postgresql package).
# Podman: set CAPSTAN_TEST_CONTAINER_HOST to an engine socket URL, or let this script install and
# start one with scripts/podman-setup.sh (needs root).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/capstan-target}"

if [ -z "${CAPSTAN_TEST_POSTGRES_URL:-}" ]; then
  CAPSTAN_TEST_POSTGRES_URL="$(scripts/pg-test-server.sh | tail -n 1)"
  export CAPSTAN_TEST_POSTGRES_URL
fi
# Every Postgres test must run: a missing server is a failure, not a skip.
export CAPSTAN_REQUIRE_POSTGRES=1

if [ -z "${CAPSTAN_TEST_CONTAINER_HOST:-}" ]; then
  CAPSTAN_TEST_CONTAINER_HOST="$(scripts/podman-setup.sh | tail -n 1)"
  export CAPSTAN_TEST_CONTAINER_HOST
fi
# Every container test must run against the real engine.
export CAPSTAN_REQUIRE_CONTAINERS=1

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast
  # nextest does not run doctests.
  cargo test --workspace --locked --doc
else
  cargo test --workspace --locked --no-fail-fast
fi
