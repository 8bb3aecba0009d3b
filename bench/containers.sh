#!/usr/bin/env bash
# Per-step overhead of the container executor on Podman, side by side with the local executor
# and with running the same containers through the Podman CLI against the same API service.
#
#   bench/containers.sh [REPEATS] [STEPS]
#
# - container: a chain of STEPS (default 20) no-op steps (`true`), each after the previous one,
#              `--executor container` on localhost/capstan-busybox:latest, parallelism 1;
# - local:     the same chain on the local executor;
# - anchor:    `podman --url HOST run --rm --network none IMAGE true`, STEPS times in a loop;
# - kfp.local: the same chain as container components under kfp.local's DockerRunner, on the
#              same service through DOCKER_HOST (bench/kfp_docker.py, with the venv of
#              scripts/python-env.sh; its `docker` package comes with moto), with a shim for
#              one Podman reply that kfp.local does not expect (see bench/kfp_docker.py). A
#              repeat that kfp.local fails is counted and left out of the median.
#
# The engine is CAPSTAN_TEST_CONTAINER_HOST, else whatever scripts/podman-setup.sh starts.
# Prints medians over REPEATS runs (default 3) and the time per step.
set -euo pipefail
cd "$(dirname "$0")/.."
repeats="${1:-3}"
steps="${2:-20}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/capstan-target}"
host="${CAPSTAN_TEST_CONTAINER_HOST:-$(scripts/podman-setup.sh | tail -n 1)}"
image="localhost/capstan-busybox:latest"
cargo build --release --quiet --bin capstan
bin="$CARGO_TARGET_DIR/release/capstan"
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT

source bench/lib.sh

{
  echo "name: chain"
  echo "steps:"
  echo "  s0: {image: $image, run: [\"true\"]}"
  for i in $(seq 1 $((steps - 1))); do
    echo "  s$i: {image: $image, run: [\"true\"], after: [s$((i-1))]}"
  done
} > "$out/chain.yaml"

run_capstan() { # EXECUTOR
  local home="$out/ws-$RANDOM$RANDOM"
  CONTAINER_HOST="$host" elapsed "$bin" --home "$home" run "$out/chain.yaml" -q --no-cache \
    --parallelism 1 --executor "$1"
  rm -rf "$home"
}
podman_loop() {
  for _ in $(seq 1 "$steps"); do podman --url "$host" run --rm --network none "$image" true; done
}

measure container run_capstan container
measure local run_capstan local
measure anchor elapsed bash -c "host=$host image=$image steps=$steps; $(declare -f podman_loop); podman_loop"

venv="${CAPSTAN_VENV:-/var/tmp/capstan-venv}"
kfp_times=()
kfp_failures=0
for _ in $(seq 1 "$repeats"); do
  t="$(DOCKER_HOST="$host" "$venv/bin/python" bench/kfp_docker.py --podman-shim "$image" "$steps" 2>/dev/null | tail -n 1)" || true
  if [[ "$t" =~ ^[0-9.]+$ ]]; then kfp_times+=("$t"); else kfp_failures=$((kfp_failures + 1)); echo "kfp.local: $t" >&2; fi
done

per_step() { echo "scale=1; $1 * 1000 / $steps" | bc -l; }
printf '\n%-44s %10s %12s\n' "chain of $steps no-op steps (median of $repeats)" "total s" "ms per step"
printf '%-44s %10.2f %12.1f\n' "capstan --executor container (Podman API)" "${med[container]}" "$(per_step "${med[container]}")"
printf '%-44s %10.2f %12.1f\n' "podman --url run --rm (same service)" "${med[anchor]}" "$(per_step "${med[anchor]}")"
printf '%-44s %10.2f %12.1f\n' "capstan --executor local" "${med[local]}" "$(per_step "${med[local]}")"
if [ "${#kfp_times[@]}" -gt 0 ]; then
  med[kfp]=$(printf '%s\n' "${kfp_times[@]}" | median)
  printf '%-44s %10.2f %12.1f\n' "kfp.local DockerRunner (same service)" "${med[kfp]}" "$(per_step "${med[kfp]}")"
fi
echo "kfp.local DockerRunner: ${#kfp_times[@]} of $repeats repeats succeeded, $kfp_failures failed"
