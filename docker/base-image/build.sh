#!/bin/sh
# Builds a local Python 3.11 base image without any container registry: a Debian bookworm
# (minbase) root filesystem with python3, venv and pip made by debootstrap from the Debian
# package mirror, then `docker import`ed. The service Dockerfile and Dockerfile.simbot take it as
# BASE_IMAGE where `python:3.11-slim` cannot be pulled.
#
# Usage: docker/base-image/build.sh [tag]     (default botmanager-python-base:3.11)
# Needs root, debootstrap (apt-get install debootstrap) and a running Docker engine. Takes
# 1-3 minutes (the package downloads); an existing image of that tag is reused unless FORCE=1.
# MIRROR overrides the Debian mirror.
set -eu
tag=${1:-botmanager-python-base:3.11}
mirror=${MIRROR:-http://deb.debian.org/debian}

if [ "${FORCE:-0}" != 1 ] && docker image inspect "$tag" >/dev/null 2>&1; then
    echo "base-image: $tag exists (FORCE=1 rebuilds it)"
    exit 0
fi
if ! command -v debootstrap >/dev/null 2>&1; then
    echo "base-image: debootstrap missing; installing it" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
fi

rootfs=$(mktemp -d)
trap 'rm -rf "$rootfs"' EXIT
debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates bookworm "$rootfs" "$mirror" \
    >"$rootfs.log" 2>&1 || { tail -n 20 "$rootfs.log" >&2; rm -f "$rootfs.log"; exit 1; }
rm -f "$rootfs.log"
# Trim what an image does not need.
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* "$rootfs"/usr/share/doc/* \
    "$rootfs"/usr/share/man/* "$rootfs"/usr/share/locale/*
# The host's own certificate authorities (/usr/local/share/ca-certificates: a company CA, a
# TLS-inspecting proxy) are trusted in the image as on the host, or pip could not reach PyPI there.
if ls /usr/local/share/ca-certificates/*.crt >/dev/null 2>&1; then
    cp /usr/local/share/ca-certificates/*.crt "$rootfs/usr/local/share/ca-certificates/"
    chroot "$rootfs" update-ca-certificates >/dev/null 2>&1
fi
# Like the official image: `python` and `python3` on PATH, and pip may install into the system
# Python (Debian marks it externally managed; an image's Python is the image's own).
rm -f "$rootfs"/usr/lib/python3*/EXTERNALLY-MANAGED
ln -sf python3 "$rootfs/usr/bin/python"

tar -C "$rootfs" -c . | docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["python3"]' \
    --change 'LABEL org.opencontainers.image.title=botmanager-python-base' \
    - "$tag" >/dev/null
docker run --rm --network none "$tag" python3 -c "import sys, venv, ensurepip, pip, ssl; assert sys.version_info[:2] == (3, 11), sys.version"
echo "base-image: built $tag ($(docker image inspect -f '{{.Size}}' "$tag" | awk '{printf "%d MB", $1/1e6}'))"
