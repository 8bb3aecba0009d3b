#!/usr/bin/env bash
# Starts a local Ray head for capstan's Ray executor tests, and prints its dashboard URL (the
# Jobs REST API) as the last line on stdout, so callers can do:
#
#   export RAY_ADDRESS="$(scripts/ray-head.sh | tail -n1)"
#   CAPSTAN_REQUIRE_RAY=1 cargo nextest run --test integration ray
#
# Idempotent: does nothing but print the URL when a head already answers there. Ray comes from
# the venv that scripts/python-env.sh creates (pinned there). The head keeps running after this
# script; stop it with `$CAPSTAN_VENV/bin/ray stop`.
set -euo pipefail
VENV="${CAPSTAN_VENV:-/var/tmp/capstan-venv}"
port="${CAPSTAN_RAY_DASHBOARD_PORT:-8265}"
url="http://127.0.0.1:${port}"

log() { echo "ray-head: $*" >&2; }

answers() { curl -fsS --max-time 2 "$url/api/version" >/dev/null 2>&1; }

if ! answers; then
    if [ ! -x "$VENV/bin/ray" ]; then
        log "no ray in $VENV; run scripts/python-env.sh first"
        exit 1
    fi
    log "starting a Ray head (dashboard $url)"
    # The head's processes inherit this PATH, so jobs find the venv's python like the tests do.
    PATH="$VENV/bin:$PATH" "$VENV/bin/ray" start --head --num-cpus=2 \
        --dashboard-host=127.0.0.1 --dashboard-port="$port" --disable-usage-stats >&2
    for _ in $(seq 1 120); do
        answers && break
        sleep 1
    done
    answers || { log "the Ray dashboard did not answer at $url"; exit 1; }
fi
echo "$url"
