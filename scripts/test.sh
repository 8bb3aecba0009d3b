#!/usr/bin/env bash
# Runs capstan's whole test suite: formatting and lints, unit tests, the store suite on SQLite and
# PostgreSQL, the container executor on Podman, and the end-to-end tests of the `capstan` command.
#
# PostgreSQL: set CAPSTAN_TEST_POSTGRES_URL to an admin URL, or let this script start a local
# server with scripts/pg-test-server.sh (needs root or the postgresql package).
# Podman: set CAPSTAN_TEST_CONTAINER_HOST to an engine socket URL, or let this script install and
# start one with scripts/podman-setup.sh (needs root).
# Ray: set CAPSTAN_TEST_RAY_ADDRESS to a head's dashboard URL, or let this script start a local
# head with scripts/ray-head.sh (from the venv of scripts/python-env.sh).
# S3: the tests start `moto_server` from that venv themselves, on ephemeral ports.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/capstan-target}"
VENV="${CAPSTAN_VENV:-/var/tmp/capstan-venv}"

# Ray: a local head takes a while to come up, so it starts in the background now and is waited
# for after the build. Set CAPSTAN_TEST_RAY_ADDRESS to use another head.
ray_log="$(mktemp)"
ray_pid=""
if [ -z "${CAPSTAN_TEST_RAY_ADDRESS:-}" ] && [ -x "$VENV/bin/ray" ]; then
  scripts/ray-head.sh >"$ray_log" 2>&1 &
  ray_pid=$!
fi

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
cargo build --workspace --all-targets --locked

if [ -n "$ray_pid" ]; then
  if wait "$ray_pid"; then
    CAPSTAN_TEST_RAY_ADDRESS="$(tail -n 1 "$ray_log")"
    export CAPSTAN_TEST_RAY_ADDRESS
  else
    cat "$ray_log" >&2
  fi
fi
# S3 (moto_server) and Ray come from the venv that .ci/run creates with scripts/python-env.sh;
# there, every S3 and Ray test must run (CAPSTAN_REQUIRE_PYTHON=1 is set by .ci/run).
if [ "${CAPSTAN_REQUIRE_PYTHON:-}" = 1 ]; then
  export CAPSTAN_REQUIRE_RAY=1 CAPSTAN_REQUIRE_S3=1
fi
export PATH="$PATH:$VENV/bin"
if cargo nextest --version >/dev/null 2>&1; then
  # Tests named `large_artifact_` move a gigabyte through a local S3 server; they run alone afterwards,
  # so that a loaded machine slows them down less.
  cargo nextest run --workspace --locked --no-fail-fast -E 'not test(/large_artifact_/)'
  cargo nextest run --workspace --locked --no-fail-fast -E 'test(/large_artifact_/)'
  # nextest does not run doctests.
  cargo test --workspace --locked --doc
else
  cargo test --workspace --locked --no-fail-fast
fi
