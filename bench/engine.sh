#!/usr/bin/env bash
# Engine overhead per step, side by side with spawning the same processes from a shell.
#
#   bench/engine.sh [REPEATS]
#
# - chain:  1,000 no-op steps (`true`), each after the previous one, parallelism 1;
#           baseline: a shell loop spawning `true` 1,000 times.
# - fanout: one `for_each` step over 10,000 items (`true ITEM`), parallelism 2;
#           baseline: `xargs -P 2` spawning `true` 10,000 times.
# - quickstart: examples/quickstart cold (fresh workspace) and fully cached.
#
# Prints medians over REPEATS runs (default 3) and the overhead per step beyond the spawn.
set -euo pipefail
cd "$(dirname "$0")/.."
repeats="${1:-3}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/capstan-target}"
cargo build --release --quiet
bin="$CARGO_TARGET_DIR/release/capstan"
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT

source bench/lib.sh

# Pipelines.
{
  echo "name: chain"
  echo "steps:"
  echo "  s0: {run: [\"true\"]}"
  for i in $(seq 1 999); do echo "  s$i: {run: [\"true\"], after: [s$((i-1))]}"; done
} > "$out/chain.yaml"
{
  echo "name: fanout"
  echo "params:"
  printf "  items: {type: list, default: ["
  seq -s, 0 9999 | tr -d '\n'
  echo "]}"
  echo "steps:"
  echo "  each: {for_each: \"{{ params.items }}\", run: [\"true\", \"{{ item }}\"]}"
} > "$out/fanout.yaml"

run_capstan() { # FILE PARALLELISM
  local home="$out/ws-$RANDOM$RANDOM"
  elapsed "$bin" --home "$home" run "$1" -q --no-cache --parallelism "$2"
  rm -rf "$home"
}
shell_chain() { for _ in $(seq 1 1000); do /bin/true; done; }
shell_fanout() { seq 1 10000 | xargs -P 2 -n 1 /bin/true; }

measure chain_capstan run_capstan "$out/chain.yaml" 1
measure chain_shell elapsed bash -c "$(declare -f shell_chain); shell_chain"
measure fanout_capstan run_capstan "$out/fanout.yaml" 2
measure fanout_shell elapsed bash -c "$(declare -f shell_fanout); shell_fanout"

qs_home="$out/qs"
cold() { rm -rf "$qs_home"; elapsed "$bin" --home "$qs_home" run examples/quickstart/pipeline.yaml -q; }
cached() { elapsed "$bin" --home "$qs_home" run examples/quickstart/pipeline.yaml -q; }
measure qs_cold cold
"$bin" --home "$qs_home" run examples/quickstart/pipeline.yaml -q >/dev/null 2>&1
measure qs_cached cached

per_step() { echo "scale=3; ($1 - $2) * 1000 / $3" | bc -l; }
printf '\n%-34s %12s %12s %18s\n' "benchmark (median of $repeats)" "capstan s" "shell s" "overhead ms/step"
printf '%-34s %12.3f %12.3f %18.3f\n' "chain, 1,000 steps, parallelism 1" "${med[chain_capstan]}" "${med[chain_shell]}" "$(per_step "${med[chain_capstan]}" "${med[chain_shell]}" 1000)"
printf '%-34s %12.3f %12.3f %18.3f\n' "fan-out, 10,000 steps, 2 cores" "${med[fanout_capstan]}" "${med[fanout_shell]}" "$(per_step "${med[fanout_capstan]}" "${med[fanout_shell]}" 10000)"
printf '%-34s %12.3f\n' "quickstart, cold" "${med[qs_cold]}"
printf '%-34s %12.3f\n' "quickstart, fully cached" "${med[qs_cached]}"
