#!/usr/bin/env bash
# capstan against kfp.local on the same compiled KFP pipelines, in one script run.
#
#   bench/kfp.sh [REPEATS]
#
# - chain: 10 `add(a, b)` Python components, each after the previous one.
# - loop:  a 4-item ParallelFor with parallelism=2.
# kfp.local runs them with SubprocessRunner(use_venv=False); capstan runs the compiled YAML with
# --no-cache (every step executes) once its Python environment is prepared (warm). Prints
# medians over REPEATS runs (default 3), and capstan's overhead per step: its wall time less the
# Python processes' own time, measured by running one component's command directly.
#
# Needs a python3 with kfp on the PATH (scripts/python-env.sh, then
# PATH=/var/tmp/capstan-venv/bin:$PATH).
set -euo pipefail
cd "$(dirname "$0")/.."
repeats="${1:-3}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/capstan-target}"
cargo build --release --quiet
bin="$CARGO_TARGET_DIR/release/capstan"
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
export CAPSTAN_KFP_ENV_DIR="${CAPSTAN_KFP_ENV_DIR:-$out/envs}"

source bench/lib.sh

python3 bench/kfp_pipelines.py compile "$out"
# Warm-up: prepares the Python environment once.
"$bin" --home "$out/ws" run -q "$out/chain.yaml" >/dev/null 2>&1

# One component process on its own, as the compiled command runs it: the floor for a step.
printf 'import kfp\nfrom kfp import dsl\nfrom kfp.dsl import *\nfrom typing import *\n\ndef add(a: int, b: int) -> int:\n    return a + b\n' > "$out/component.py"
step_cmd() {
  local dir; dir="$(mktemp -d -p "$out")"
  _KFP_RUNTIME=true python3 -m kfp.dsl.executor_main --component_module_path "$out/component.py" \
    --executor_input "{\"inputs\": {\"parameterValues\": {\"a\": 1, \"b\": 1}}, \"outputs\": {\"parameters\": {\"Output\": {\"outputFile\": \"$dir/o\"}}, \"outputFile\": \"$dir/x.json\"}}" \
    --function_to_execute add
}
proc=$(for _ in $(seq "$repeats"); do elapsed step_cmd; done | median)

printf "%-8s %12s %12s %8s %22s\n" pipeline kfp.local capstan speedup "capstan overhead/step"
for name in chain loop; do
  steps=$([ "$name" = chain ] && echo 10 || echo 4)
  local_t=$(python3 bench/kfp_pipelines.py local "$name" "$repeats" 2>/dev/null | sed -n 's/.*capstan-bench-time=//p' | median)
  capstan_t=$(for _ in $(seq "$repeats"); do elapsed "$bin" --home "$out/ws" run -q --no-cache "$out/$name.yaml"; done | median)
  # The chain runs its steps one after another; the loop two at a time.
  serial=$([ "$name" = chain ] && echo "$steps" || echo "$steps / 2")
  overhead=$(echo "($capstan_t - ($serial) * $proc) / $steps" | bc -l)
  printf "%-8s %11.2fs %11.2fs %7.1fx %20.0fms\n" "$name" "$local_t" "$capstan_t" \
    "$(echo "$local_t / $capstan_t" | bc -l)" "$(echo "$overhead * 1000" | bc -l)"
done
printf "one component process alone: %.0fms\n" "$(echo "$proc * 1000" | bc -l)"
