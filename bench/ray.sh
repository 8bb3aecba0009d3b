#!/usr/bin/env bash
# Per-step overhead of the Ray executor for a no-op step, with the local executor as reference.
#
#   RAY_ADDRESS=http://127.0.0.1:8265 bench/ray.sh [REPEATS] [CHAIN] [FANOUT]
#
# - chain:  CHAIN no-op steps (`true`, default 10), each after the previous one, parallelism 1:
#           the latency one step adds (submit the Ray job, start `capstan step-exec`, run, poll,
#           read the result document).
# - fanout: one `for_each` step over FANOUT items (default 40), parallelism 8: steps per second.
#
# Starts a local head with scripts/ray-head.sh when RAY_ADDRESS is not set. Prints medians over
# REPEATS runs (default 3). Uses a release build, or the binary at CAPSTAN_BIN when set.
set -euo pipefail
cd "$(dirname "$0")/.."
repeats="${1:-3}"
chain="${2:-10}"
fanout="${3:-40}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/capstan-target}"
export RAY_ADDRESS="${RAY_ADDRESS:-$(scripts/ray-head.sh | tail -n 1)}"
if [ -z "${CAPSTAN_BIN:-}" ]; then
  cargo build --release --quiet
fi
bin="${CAPSTAN_BIN:-$CARGO_TARGET_DIR/release/capstan}"
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT

source bench/lib.sh

{
  echo "name: chain"
  echo "steps:"
  echo "  s0: {run: [\"true\"]}"
  for i in $(seq 1 $((chain - 1))); do echo "  s$i: {run: [\"true\"], after: [s$((i-1))]}"; done
} > "$out/chain.yaml"
{
  echo "name: fanout"
  echo "params:"
  printf "  items: {type: list, default: ["
  seq -s, 0 $((fanout - 1)) | tr -d '\n'
  echo "]}"
  echo "steps:"
  echo "  each: {for_each: \"{{ params.items }}\", run: [\"true\", \"{{ item }}\"]}"
} > "$out/fanout.yaml"

run_median() { # executor pipeline parallelism -> median seconds
  local executor=$1 pipeline=$2 par=$3 i
  for i in $(seq 1 "$repeats"); do
    rm -rf "$out/ws"
    elapsed "$bin" --home "$out/ws" run "$out/$pipeline.yaml" --executor "$executor" \
      --parallelism "$par" --no-cache -q
  done | median
}

printf "%-8s %-7s %6s %10s %12s %10s\n" scenario exec steps "median s" "ms/step" "steps/s"
for executor in local ray; do
  t=$(run_median "$executor" chain 1)
  printf "%-8s %-7s %6d %10.2f %12.1f %10.1f\n" chain "$executor" "$chain" "$t" \
    "$(echo "$t * 1000 / $chain" | bc -l)" "$(echo "$chain / $t" | bc -l)"
  t=$(run_median "$executor" fanout 8)
  printf "%-8s %-7s %6d %10.2f %12.1f %10.1f\n" fanout "$executor" "$fanout" "$t" \
    "$(echo "$t * 1000 / $fanout" | bc -l)" "$(echo "$fanout / $t" | bc -l)"
done
echo "(Ray's own release tests: 443-582 tasks/s for Ray tasks, which are not jobs)"
