#!/usr/bin/env bash
# Prepares real Podman for capstan's container executor tests, and prints the socket URL.
#
# Idempotent: installs `podman runc busybox-static` only when missing, writes the containers.conf
# that works on these machines (runc, cgroupfs, explicit ulimits) only when it differs, builds the
# test images `localhost/capstan-busybox:latest` (and, with scripts/podman-python-image.sh,
# `localhost/capstan-python:latest` and `localhost/capstan-kfp:latest`) only when they are absent, and starts the API service
# only when its socket does not answer. The last line on stdout is the URL, so callers can do:
#
#   export CAPSTAN_TEST_CONTAINER_HOST="$(scripts/podman-setup.sh | tail -n1)"
#   CAPSTAN_REQUIRE_CONTAINERS=1 cargo test -p capstan-exec --test container
set -euo pipefail

socket="${CAPSTAN_PODMAN_SOCKET:-/tmp/capstan-podman.sock}"
image="localhost/capstan-busybox:latest"
conf="/etc/containers/containers.conf"

log() { echo "podman-setup: $*" >&2; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

missing=()
command -v podman >/dev/null || missing+=(podman)
command -v runc >/dev/null || missing+=(runc)
[ -x /bin/busybox ] || missing+=(busybox-static)
if [ "${#missing[@]}" -gt 0 ]; then
    log "installing ${missing[*]}"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y "${missing[@]}" >&2 || {
        as_root apt-get update >&2
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y "${missing[@]}" >&2
    }
fi

# crun fails here on hybrid cgroups and on setrlimit; runc with cgroupfs works.
wanted_conf='[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"'
if [ "$(cat "$conf" 2>/dev/null)" != "$wanted_conf" ]; then
    log "writing $conf"
    as_root mkdir -p "$(dirname "$conf")"
    printf '%s\n' "$wanted_conf" | as_root tee "$conf" >/dev/null
fi

if ! as_root podman image exists "$image"; then
    log "building $image from busybox-static"
    root="$(mktemp -d)"
    trap 'rm -rf "$root"' EXIT
    mkdir -p "$root/bin" "$root/tmp" "$root/etc"
    cp /bin/busybox "$root/bin/busybox"
    for applet in $("$root/bin/busybox" --list); do
        [ "$applet" = busybox ] || ln -sf busybox "$root/bin/$applet"
    done
    echo 'root:x:0:0:root:/root:/bin/sh' >"$root/etc/passwd"
    echo 'root:x:0:' >"$root/etc/group"
    tar -C "$root" -cf "$root.tar" .
    as_root podman import --change 'ENV PATH=/bin' --change 'CMD ["/bin/sh"]' "$root.tar" "$image" >&2
    rm -f "$root.tar"
fi

# Debian with python3, for Python pipelines in containers (cached under /var/tmp).
"$(dirname "$0")/podman-python-image.sh" >&2
# The same with the kfp SDK, for KFP pipelines in containers; its kfp comes from the venv of
# scripts/python-env.sh, which .ci/run creates first.
if [ -x "${CAPSTAN_VENV:-/var/tmp/capstan-venv}/bin/python" ]; then
    "$(dirname "$0")/podman-python-image.sh" kfp >&2
else
    log "no Python venv: skipping localhost/capstan-kfp:latest (run scripts/python-env.sh)"
fi

if ! curl -sf --unix-socket "$socket" http://d/_ping >/dev/null 2>&1; then
    log "starting podman system service on $socket"
    rm -f "$socket"
    # From `/`: the service and the conmon processes it starts keep this working directory, and
    # one that is deleted later (a temporary clone) makes every container start fail.
    (cd / && as_root nohup podman system service --time=0 "unix://$socket") \
        </dev/null >/tmp/capstan-podman-service.log 2>&1 &
    for _ in $(seq 1 100); do
        curl -sf --unix-socket "$socket" http://d/_ping >/dev/null 2>&1 && break
        sleep 0.1
    done
    curl -sf --unix-socket "$socket" http://d/_ping >/dev/null || {
        log "podman system service did not answer on $socket; see /tmp/capstan-podman-service.log"
        exit 1
    }
fi

echo "unix://$socket"
