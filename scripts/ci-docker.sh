#!/usr/bin/env bash
# Makes a Docker engine available to the Docker tests and builds their bot image (no registry).
#
# 1. dockerd missing: apt-get install docker.io (and busybox-static, for the test bot image).
# 2. `docker info` fails: start dockerd in the background (log: $RUN_DIR/dockerd.log, default
#    .run/), storage driver overlay2, falling back to vfs, then to vfs without iptables (some
#    sandboxes refuse overlay mounts or netfilter), with --live-restore (containers outlive a
#    dockerd restart); wait until `docker info` answers.
# 3. build botmanager-test-bot:latest (docker/bot-test-image/build.sh, about a second).
#
# DOCKER_HOST=unix:///path.sock starts and uses an engine on that socket instead of the default
# one; DOCKERD_EXTRA_ARGS adds dockerd flags (a second engine needs its own --data-root,
# --exec-root and --pidfile; never --bridge=none next to a running engine: a dockerd started
# that way deletes the docker0 bridge the other one uses). Needs root for apt-get and dockerd.
set -euo pipefail
cd "$(dirname "$0")/.."
started_at=$(date +%s)
log_dir=${RUN_DIR:-.run}
mkdir -p "$log_dir"
log_file="$log_dir/dockerd.log"

say() { echo "ci-docker: $*"; }

packages=()
command -v dockerd >/dev/null 2>&1 || packages+=(docker.io)
dpkg -s busybox-static >/dev/null 2>&1 || packages+=(busybox-static)
if ((${#packages[@]})); then
    say "installing ${packages[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
fi

host_args=()
if [[ -n "${DOCKER_HOST:-}" ]]; then
    host_args=(-H "$DOCKER_HOST")
fi

engine_ready() { docker info >/dev/null 2>&1; }

wait_ready() {  # pid, seconds: true once `docker info` answers, false if dockerd died or time ran out
    local pid=$1 deadline=$((SECONDS + $2))
    while ((SECONDS < deadline)); do
        engine_ready && return 0
        kill -0 "$pid" 2>/dev/null || return 1
        sleep 0.5
    done
    return 1
}

if engine_ready; then
    say "engine already running ($(docker version --format '{{.Server.Version}}'))"
else
    attempts=("--storage-driver=overlay2" "--storage-driver=vfs" "--storage-driver=vfs --iptables=false --ip-masq=false")
    ready=""
    for attempt in "${attempts[@]}"; do
        say "starting dockerd $attempt (log: $log_file)"
        # shellcheck disable=SC2086  # the attempt and extra args are word lists on purpose
        # --live-restore: bots (containers) keep running while dockerd restarts (docs/orchestrators.md, docker).
        nohup dockerd "${host_args[@]}" --live-restore $attempt ${DOCKERD_EXTRA_ARGS:-} >>"$log_file" 2>&1 &
        pid=$!
        if wait_ready "$pid" 60; then
            ready=$attempt
            break
        fi
        say "dockerd $attempt did not come up; last log lines:"
        tail -n 5 "$log_file" | sed 's/^/    /'
        kill "$pid" 2>/dev/null || true  # it may have died already; then there is nothing to stop
        wait "$pid" 2>/dev/null || true  # reap it; its exit status is in the log
    done
    if [[ -z "$ready" ]]; then
        say "no Docker engine could be started; see $log_file" >&2
        exit 1
    fi
    say "engine up with $ready"
fi

docker/bot-test-image/build.sh
say "ready in $(($(date +%s) - started_at)) s"
