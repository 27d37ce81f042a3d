#!/usr/bin/env bash
# `make compose-check`: the whole docker-compose.yml deployment, for real, without any registry.
#
# 1. images: the service and bot images `make docker-build-check` built (botmanager:check,
#    botmanager-simbot:check: not built twice) and the postgres/redis stand-ins of
#    docker-compose.offline.yml (Debian packages on the base image; about 25 s, cached after).
# 2. `up -d` of both files under a project of its own (COMPOSE_PROJECT_NAME, network, deployment
#    name and host port all unique to this run; random secrets), then waits until every
#    long-running service is healthy and the one-shots (migrate, simbot-image) exited 0.
# 3. through the web's published port: a user made with `manage.py create_user`, a whole meeting
#    with the simbot image (POST -> active -> PUT config, heard by the bot -> DELETE -> completed,
#    the container removed by the sweep), /readyz 200 with the docker backend, /metrics; every log
#    line of web, workers and beat is JSON. Only worker-orchestrator and docker-proxy mount the
#    engine socket, and from the web the read-only proxy refuses to signal the bot (403).
# 4. down as docs/operations.md says: a live bot, `manage.py remove_bots` (make compose-down), then
#    `down -v`; afterwards no container, network or volume of the project or its bots is left.
#
# COMPOSE: the compose command (default `docker compose` when Compose v2 answers, else
# `docker-compose`). Needs a running engine (scripts/ci-docker.sh) and the images of
# `make docker-build-check` (BOTMANAGER_IMAGE / BOT_IMAGE name others). About 1.5-2 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
started=$SECONDS
say() { echo "compose-check: $*"; }
if [[ -z "${COMPOSE:-}" ]]; then
    if docker compose version >/dev/null 2>&1; then COMPOSE="docker compose"; else COMPOSE=docker-compose; fi
fi
PY=${PYTHON:-.venv/bin/python}
run_id="bmcheck$$"
export COMPOSE_PROJECT_NAME=$run_id COMPOSE_NETWORK_NAME=$run_id DEPLOYMENT_NAME=$run_id
export COMPOSE_FILE=${COMPOSE_FILE:-docker-compose.yml:docker-compose.offline.yml}  # more files: append yours
export BOTMANAGER_IMAGE=${BOTMANAGER_IMAGE:-botmanager:check} BOT_IMAGE=${BOT_IMAGE:-botmanager-simbot:check}
export BASE_IMAGE=${BASE_IMAGE:-botmanager-python-base:3.11}
export DOCKER_GID=$(stat -c %g /var/run/docker.sock)
export PORT=$("$PY" -c "import socket; s=socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
secret() { "$PY" -c "import secrets; print(secrets.token_urlsafe(48))"; }
export SECRET_KEY=$(secret) BOT_TOKEN_SECRET=$(secret) ADMIN_API_TOKEN=$(secret) POSTGRES_PASSWORD=$(secret | tr -d -- '-_')
export REDIS_PASSWORD=$(secret | tr -d -- '-_') METRICS_TOKEN=$(secret)
export ORPHAN_SWEEP_INTERVAL_SECONDS=${ORPHAN_SWEEP_INTERVAL_SECONDS:-5}  # the sweep removes exited bots this soon
# shellcheck disable=SC2086  # COMPOSE is a command with its arguments
dc() { $COMPOSE "$@"; }

leftovers() {  # what this run left on the engine, one line each
    docker ps -aq --filter "label=com.docker.compose.project=$run_id" | sed 's/^/container /'
    docker ps -aq --filter "label=botmanager.deployment=$DEPLOYMENT_NAME" | sed 's/^/bot /'
    docker network ls -q --filter "name=^${run_id}" | sed 's/^/network /'
    docker volume ls -q --filter "label=com.docker.compose.project=$run_id" | sed 's/^/volume /'
}
cleanup() {
    docker ps -aq --filter "label=botmanager.deployment=$DEPLOYMENT_NAME" | xargs -r docker rm -f >/dev/null 2>&1 || true
    dc down -v --remove-orphans >/dev/null 2>&1 || true
}
fail() {
    say "FAILED: $*"
    for service in migrate web docker-proxy worker-orchestrator worker-sweep beat postgres redis; do
        dc logs --no-color --tail 15 "$service" 2>&1 | sed "s/^/  /" || true
    done
    cleanup
    exit 1
}
trap cleanup EXIT

for image in "$BOTMANAGER_IMAGE" "$BOT_IMAGE"; do
    docker image inspect "$image" >/dev/null 2>&1 || fail "image $image is missing: run make docker-build-check first"
done
# The services: what to build here (every image but the two reused ones: the stand-ins, and any
# other the file builds), the one-shots (restart "no") and the long-running ones.
config=$(dc config 2>&1) || fail "config: $config"
eval "$("$PY" - "$config" <<'EOF'
import os, sys, yaml
services = yaml.safe_load(sys.argv[1])["services"]
reused = {os.environ["BOTMANAGER_IMAGE"], os.environ["BOT_IMAGE"]}
built_images, build = set(), []
for name, s in sorted(services.items()):  # one service per image: the stand-in image serves two
    if "build" in s and s.get("image") not in reused | built_images:
        build.append(name)
        built_images.add(s.get("image"))
one_shots = [n for n, s in services.items() if s.get("restart") == "no"]
print(f"build=({' '.join(build)})")
print(f"one_shots=({' '.join(sorted(one_shots))})")
print(f"long_running=({' '.join(sorted(n for n in services if n not in one_shots and n != 'beat'))})")
EOF
)"
say "building ${build[*]} (stand-ins: docker-compose.offline.yml) with $COMPOSE"
out=$(dc build -q "${build[@]}" 2>&1) || fail "build: $out"
say "up: project $run_id, web on 127.0.0.1:$PORT (images $BOTMANAGER_IMAGE, $BOT_IMAGE)"
up_at=$SECONDS
out=$(dc up -d --no-build 2>&1) || fail "up: $out"

# Health: every long-running service healthy, the one-shots exited 0.
state() {  # service -> "<status>/<health>/<exit code>"
    local id
    id=$(dc ps -q "$1" 2>/dev/null | head -n 1)
    [[ -n $id ]] || { echo missing; return; }
    docker inspect -f '{{.State.Status}}/{{if .State.Health}}{{.State.Health.Status}}{{end}}/{{.State.ExitCode}}' "$id"
}
for _ in $(seq 1 120); do
    pending=()
    for s in "${long_running[@]}"; do [[ $(state "$s") == running/healthy/* ]] || pending+=("$s"); done
    for s in "${one_shots[@]}"; do [[ $(state "$s") == exited/*/0 ]] || pending+=("$s"); done
    ((${#pending[@]} == 0)) && break
    for s in "${long_running[@]}" "${one_shots[@]}"; do
        [[ $(state "$s") == running/unhealthy/* || $(state "$s") == exited/*/[1-9]* ]] && fail "$s is $(state "$s")"
    done
    sleep 2
done
((${#pending[@]} == 0)) || fail "not healthy after 240 s: ${pending[*]}"
[[ $(state beat) == running/* ]] || fail "beat is $(state beat)"
healthy_in=$((SECONDS - up_at))
say "every service healthy ${healthy_in} s after up (beat: $(state beat); its check needs a sweep)"

B="http://127.0.0.1:$PORT"
created=$(dc exec -T web python manage.py create_user "ci-$run_id@example.com" --token 2>&1) || fail "create_user: $created"
KEY=$(grep -o 'bm_[A-Za-z0-9_-]*' <<<"$created" | head -n 1)
[[ -n $KEY ]] || fail "no API key in: $created"
api() { curl -sS -H "X-API-Key: $KEY" -H 'Content-Type: application/json' "$@"; }
field() { "$PY" -c "import json, sys; d = json.load(sys.stdin); print(eval(sys.argv[1], {}, {'d': d}))" "$1"; }
wait_meeting() {  # id, wanted status, seconds
    local status=""
    for _ in $(seq 1 $(($3 * 2))); do
        status=$(api "$B/meetings/$1" | field 'd["status"]')
        [[ $status == "$2" ]] && return 0
        sleep 0.5
    done
    fail "meeting $1 is $status, wanted $2: $(api "$B/meetings/$1")"
}

meeting_at=$SECONDS
body=$(api -X POST "$B/bots" -d '{"platform": "google_meet", "native_meeting_id": "abc-defg-hij", "bot_name": "CI"}')
id=$(field 'd["id"]' <<<"$body") || fail "POST /bots: $body"
wait_meeting "$id" active 60
active_in=$((SECONDS - meeting_at))
bot=$(api "$B/meetings/$id" | field 'd["bot_container_id"]')
status=$(api "$B/bots/status")
[[ $(field 'len(d["running_bots"])' <<<"$status") == 1 ]] || fail "GET /bots/status: $status"
[[ $(field 'all(k.startswith("botmanager.") for k in d["running_bots"][0]["labels"])' <<<"$status") == True ]] \
    || fail "foreign labels: $status"
code=$(api -o /dev/null -w '%{http_code}' -X PUT "$B/bots/google_meet/abc-defg-hij/config" -d '{"language": "de"}')
[[ $code == 202 ]] || fail "PUT config answered $code"
heard=""
for _ in $(seq 1 30); do
    docker logs "$bot" 2>&1 | grep -q 'reconfigured: language=de' && { heard=1; break; }
    sleep 0.5
done
[[ -n $heard ]] || fail "the bot never heard the new config: $(docker logs --tail 20 "$bot" 2>&1)"
# The engine socket: only in the service that starts bots and in the read-only proxy.
for s in "${long_running[@]}"; do
    mounts=$(docker inspect -f '{{range .Mounts}}{{.Source}} {{end}}' "$(dc ps -q "$s")")
    case $s in
        worker-orchestrator|docker-proxy) [[ $mounts == *docker.sock* ]] || fail "$s has no engine socket" ;;
        *) [[ $mounts != *docker.sock* ]] || fail "$s mounts the engine socket" ;;
    esac
done
# From the web, the engine answers listings and inspections only: a signal to the bot is refused.
refused=$(dc exec -T web python -c "
import docker, sys
api = docker.APIClient(base_url='tcp://docker-proxy:2375', version='auto', timeout=10)
assert 'Env' not in api.inspect_container(sys.argv[1])['Config']
try:
    api.kill(sys.argv[1])
except docker.errors.APIError as e:
    print(e.status_code)
" "$bot" 2>&1) || fail "the web could not inspect the bot through docker-proxy: $refused"
[[ $refused == 403 ]] || fail "docker-proxy did not refuse a kill from the web: $refused"
[[ $(docker inspect -f '{{.State.Running}}' "$bot") == true ]] || fail "the bot was signalled through docker-proxy"
say "engine socket only in worker-orchestrator and docker-proxy; the web inspects the bot (no Env) and its kill gets 403"
code=$(api -o /dev/null -w '%{http_code}' -X DELETE "$B/bots/google_meet/abc-defg-hij")
[[ $code == 202 ]] || fail "DELETE answered $code"
wait_meeting "$id" completed 60
for _ in $(seq 1 120); do  # the sweep (ORPHAN_SWEEP_INTERVAL_SECONDS) removes the exited container
    docker inspect "$bot" >/dev/null 2>&1 || break
    sleep 1
done
docker inspect "$bot" >/dev/null 2>&1 && fail "the exited bot container $bot was never removed"
meeting_in=$((SECONDS - meeting_at))
say "meeting: active in ${active_in} s, config heard, completed, container removed; ${meeting_in} s in all"

ready=$(curl -sS -w ' %{http_code}' "$B/readyz")
[[ $ready == *" 200" && $ready == *'"name": "docker"'* ]] || fail "/readyz: $ready"
metrics=$(curl -fsS -H "Authorization: Bearer $METRICS_TOKEN" "$B/metrics") || fail "/metrics"
grep -q '^botmanager_meetings{status="completed"} 1.0' <<<"$metrics" || fail "/metrics: the completed meeting is not counted"
for s in web docker-proxy worker-lifecycle worker-orchestrator worker-webhooks worker-sweep beat; do
    logs=$(docker logs "$(dc ps -q "$s")" 2>&1)
    printf '%s\n' "$logs" | "$PY" -c "
import json, sys
lines = [l for l in sys.stdin.read().splitlines() if l.strip()]
bad = [l for l in lines if not l.lstrip().startswith('{') or not isinstance(json.loads(l), dict)]
assert lines and not bad, f'$s: {len(bad)} of {len(lines)} lines are not JSON, e.g. {bad[:2]}'
" || fail "the logs of $s are not JSON lines"
done
# The web and the sweep never needed more than the proxy passes: its one refusal is the kill above.
refusals=$(docker logs "$(dc ps -q docker-proxy)" 2>&1 | grep -c '"refused ' || true)
[[ $refusals == 1 ]] || fail "docker-proxy refused $refusals requests (1 expected): $(docker logs --tail 10 "$(dc ps -q docker-proxy)" 2>&1)"
say "/readyz 200 (docker backend), /metrics, JSON logs of web, docker-proxy, workers and beat; docker-proxy refused only the kill"

# Down, as docs/operations.md says: first the bots (one still in a meeting), then the services and volumes.
body=$(api -X POST "$B/bots" -d '{"platform": "teams", "native_meeting_id": "1234567890"}')
wait_meeting "$(field 'd["id"]' <<<"$body")" active 60
down_at=$SECONDS
dc run --rm --no-deps -T worker-orchestrator python manage.py remove_bots >/dev/null 2>&1 || fail "remove_bots"
dc down -v --remove-orphans >/dev/null 2>&1 || fail "down -v"
left=$(leftovers)
[[ -z $left ]] || fail "left behind after down: $left"
trap - EXIT
say "OK in $((SECONDS - started)) s (healthy ${healthy_in} s after up; meeting ${meeting_in} s; remove_bots + down -v $((SECONDS - down_at)) s): nothing left"
