#!/usr/bin/env bash
# Builds the local image `localhost/capstan-python:latest`: a minimal Debian (debootstrap
# --variant=minbase) with python3 and its standard library, for running Python pipelines (the
# quickstart) with `--executor container` where no registry can be reached.
#
# Idempotent and cached: the root file system is bootstrapped once into a tarball under
# ${CAPSTAN_IMAGE_CACHE:-/var/tmp/capstan-images}, from the Debian mirror and release that this
# machine's apt sources already use; the image is imported from it only when Podman lacks it.
# Needs root (debootstrap and podman run as root here). Prints the image name on its last line.
set -euo pipefail

image="localhost/capstan-python:latest"
cache="${CAPSTAN_IMAGE_CACHE:-/var/tmp/capstan-images}"
tarball="$cache/debian-minbase-python3.tar"

log() { echo "podman-python-image: $*" >&2; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

if as_root podman image exists "$image"; then
    echo "$image"
    exit 0
fi

# The mirror and release this machine installs its own packages from.
mirror() {
    local uri
    uri="$(grep -hs -E '^URIs:' /etc/apt/sources.list.d/*.sources | grep -v security | head -n1 | awk '{print $2}')"
    if [ -z "$uri" ]; then
        uri="$(grep -hs -E '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list |
            grep -v -e security -e '\[' | head -n1 | awk '{print $2}')"
    fi
    [ -n "$uri" ] || { log "no Debian mirror found in the apt sources"; exit 1; }
    echo "$uri"
}

if [ ! -s "$tarball" ]; then
    command -v debootstrap >/dev/null || {
        log "installing debootstrap"
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y debootstrap >&2 || {
            as_root apt-get update >&2
            as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y debootstrap >&2
        }
    }
    # shellcheck disable=SC1091
    suite="$(. /etc/os-release && echo "${VERSION_CODENAME:-bookworm}")"
    url="$(mirror)"
    root="$(mktemp -d /var/tmp/capstan-rootfs.XXXXXX)"
    trap 'as_root rm -rf "$root"' EXIT
    started=$(date +%s)
    log "bootstrapping $suite (minbase + python3) from the apt mirror into $root"
    as_root debootstrap --variant=minbase --include=python3 "$suite" "$root" "$url" >&2
    # Package lists, caches and docs are not needed at run time.
    as_root rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* \
        "$root"/usr/share/doc "$root"/usr/share/man "$root"/usr/share/locale
    mkdir -p "$cache"
    as_root tar -C "$root" -cf "$tarball.tmp" .
    mv "$tarball.tmp" "$tarball"
    log "bootstrapped in $(($(date +%s) - started))s: $(du -h "$tarball" | cut -f1)"
fi

log "importing $image from $tarball"
as_root podman import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["/usr/bin/python3"]' "$tarball" "$image" >&2
echo "$image"
