#!/bin/sh
# Builds the test bot image without any registry: a busybox rootfs with bot.sh, `docker import`ed.
# Usage: docker/bot-test-image/build.sh [tag]   (default botmanager-test-bot:latest). Takes ~1 s.
# Needs a statically linked busybox on the host (Debian: apt-get install busybox-static).
set -eu
tag=${1:-botmanager-test-bot:latest}
here=$(cd "$(dirname "$0")" && pwd)

busybox=""
for candidate in /bin/busybox /usr/bin/busybox $(command -v busybox 2>/dev/null || true); do
    if [ -x "$candidate" ]; then
        busybox=$candidate
        break
    fi
done
if [ -z "$busybox" ]; then
    echo "build.sh: no busybox found (Debian: apt-get install busybox-static)" >&2
    exit 1
fi

rootfs=$(mktemp -d)
trap 'rm -rf "$rootfs"' EXIT
mkdir -p "$rootfs/bin" "$rootfs/tmp" "$rootfs/etc"
cp "$busybox" "$rootfs/bin/busybox"
for applet in sh sleep sed wget timeout cat echo printf kill ps true; do
    ln -s busybox "$rootfs/bin/$applet"
done
cp "$here/bot.sh" "$rootfs/bot"
chmod 0755 "$rootfs/bot"
chmod 1777 "$rootfs/tmp"
echo 'root:x:0:0:root:/:/bin/sh' > "$rootfs/etc/passwd"

previous=$(docker image inspect --format '{{.Id}}' "$tag" 2>/dev/null || true)
tar -C "$rootfs" -c . | docker import \
    --change 'CMD ["/bot"]' \
    --change 'ENV PATH=/bin' \
    --change 'LABEL org.opencontainers.image.title=botmanager-test-bot' \
    - "$tag" >/dev/null
# A dynamically linked busybox cannot run in this loader-less rootfs: prove the image runs.
if ! docker run --rm --network none "$tag" /bin/busybox true; then
    echo "build.sh: $tag does not run; $busybox must be statically linked (apt-get install busybox-static)" >&2
    exit 1
fi
# Each build re-tags: drop the image it replaced, unless a container still uses it (then it stays).
current=$(docker image inspect --format '{{.Id}}' "$tag")
if [ -n "$previous" ] && [ "$previous" != "$current" ]; then
    docker image rm "$previous" >/dev/null 2>&1 || echo "build.sh: previous image $previous still in use, kept"
fi
echo "build.sh: built $tag"
