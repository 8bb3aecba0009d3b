#!/usr/bin/env bash
# Builds local Python images for running Python pipelines with `--executor container` where no
# registry can be reached, and prints the image name on its last line:
#
#   scripts/podman-python-image.sh       localhost/capstan-python:latest: a minimal Debian
#                                        (debootstrap --variant=minbase) with python3 and its
#                                        standard library (the quickstart)
#   scripts/podman-python-image.sh kfp   localhost/capstan-kfp:latest: the same with the kfp SDK,
#                                        for KFP pipelines whose Python components run kfp's own
#                                        executor (`python3 -m kfp.dsl.executor_main`)
#
# Idempotent and cached: the root file system is bootstrapped once into a tarball under
# ${CAPSTAN_IMAGE_CACHE:-/var/tmp/capstan-images}, from the Debian mirror and release that this
# machine's apt sources already use; an image is imported from it only when Podman lacks it.
#
# kfp: the version is the one in the venv of scripts/python-env.sh ($CAPSTAN_VENV), the one that
# compiles the test pipelines. It and its dependencies are installed with that venv's pip, from
# the package index pip reaches, into the image's /usr/local/lib/python3.X/dist-packages, and
# kept as a second tarball in the cache. The venv's interpreter must have the image's python3
# version, since some of those wheels are built for one.
#
# Needs root (debootstrap and podman run as root here).
set -euo pipefail

flavour="${1:-python}"
cache="${CAPSTAN_IMAGE_CACHE:-/var/tmp/capstan-images}"
tarball="$cache/debian-minbase-python3.tar"
VENV="${CAPSTAN_VENV:-/var/tmp/capstan-venv}"
case "$flavour" in
    python) image="localhost/capstan-python:latest" ;;
    kfp) image="localhost/capstan-kfp:latest" ;;
    *) echo "usage: $0 [kfp]" >&2; exit 2 ;;
esac

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

# Temporary files and directories, removed on exit.
scratch=()
trap 'for f in "${scratch[@]}"; do as_root rm -rf "$f"; done' EXIT

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
    scratch+=("$root")
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

source="$tarball"
if [ "$flavour" = kfp ]; then
    version="$("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("kfp"))' 2>/dev/null)" || {
        log "no kfp in $VENV; run scripts/python-env.sh first"
        exit 1
    }
    # (grep stops reading early; tar's broken pipe is not a failure)
    pyver="$(set +o pipefail; tar -tf "$tarball" | grep -m1 -oE '^\./usr/lib/python3\.[0-9]+/$' | sed -E 's#^\./usr/lib/python(3\.[0-9]+)/$#\1#')"
    venv_pyver="$("$VENV/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
    if [ "$pyver" != "$venv_pyver" ]; then
        log "the image has python $pyver but $VENV has $venv_pyver; their wheels would not match"
        exit 1
    fi
    packages="$cache/kfp-$version-python$pyver.tar"
    if [ ! -s "$packages" ]; then
        stage="$(mktemp -d /var/tmp/capstan-kfp-stage.XXXXXX)"
        scratch+=("$stage")
        site="usr/local/lib/python$pyver/dist-packages"
        started=$(date +%s)
        log "installing kfp==$version and its dependencies for python $pyver"
        "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-compile \
            --target "$stage/$site" "kfp==$version" >&2
        # Console scripts point at the venv's interpreter; the components never use them.
        rm -rf "${stage:?}/$site/bin"
        # The packages only: the base already holds dist-packages itself, and an image layer
        # may not name a path twice.
        (cd "$stage" && find "./$site" -mindepth 1 -maxdepth 1 -print0 | sort -z |
            tar --null -T - -cf "$packages.tmp")
        mv "$packages.tmp" "$packages"
        log "installed in $(($(date +%s) - started))s: $(du -h "$packages" | cut -f1)"
    fi
    # One tarball: the base file system, then the packages on top.
    source="$(mktemp /var/tmp/capstan-kfp-image.XXXXXX.tar)"
    scratch+=("$source")
    cp "$tarball" "$source"
    tar -Af "$source" "$packages"
fi

log "importing $image"
as_root podman import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["/usr/bin/python3"]' "$source" "$image" >&2
echo "$image"
