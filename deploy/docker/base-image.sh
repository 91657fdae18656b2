#!/usr/bin/env bash
# Builds the executor image's base offline-capable: a minimal Debian 12 root file system made
# with debootstrap (from the distribution's mirror, no registry) and imported into Docker.
#
#   deploy/docker/base-image.sh [TAG]        default TAG: basilica/debian-base:bookworm
#
# The debootstrap tarball is cached under CACHE_DIR (default target/base-image), keyed by the
# date, so a second run on the same day imports it without downloading anything.
set -euo pipefail

tag=${1:-basilica/debian-base:bookworm}
root=$(cd "$(dirname "$0")/../.." && pwd)
cache=${CACHE_DIR:-$root/target/base-image}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
tarball=$cache/bookworm-minbase-$(date -u +%Y%m%d).tar

if docker image inspect "$tag" >/dev/null 2>&1 && [ -z "${FORCE:-}" ]; then
    echo "base image $tag already present"
    exit 0
fi
command -v debootstrap >/dev/null || { echo "base-image: debootstrap is missing (apt-get install debootstrap)" >&2; exit 1; }
[ "$(id -u)" = 0 ] || { echo "base-image: debootstrap needs root" >&2; exit 1; }
mkdir -p "$cache"
if [ ! -s "$tarball" ]; then
    work=$(mktemp -d "$cache/rootfs.XXXXXX")
    trap 'rm -rf "$work"' EXIT
    echo "base-image: debootstrap bookworm (minbase) from $mirror"
    debootstrap --variant=minbase --include=ca-certificates,curl bookworm "$work" "$mirror" >"$cache/debootstrap.log" 2>&1 \
        || { tail -20 "$cache/debootstrap.log" >&2; exit 1; }
    rm -rf "$work"/var/cache/apt/archives/*.deb "$work"/var/lib/apt/lists/*
    tar --numeric-owner -C "$work" -cf "$tarball.tmp" .
    mv "$tarball.tmp" "$tarball"
    find "$cache" -name 'bookworm-minbase-*.tar' ! -path "$tarball" -delete
fi
docker import --change 'CMD ["/bin/bash"]' "$tarball" "$tag" >/dev/null
echo "base image $tag imported from $tarball"
