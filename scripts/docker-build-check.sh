#!/usr/bin/env bash
# `make docker-build-check`: builds the compose file's two images with a real Docker engine and
# proves the service image runs, without any container registry.
#
# 1. base image: docker/base-image/build.sh (Debian bookworm + Python 3.11 via debootstrap,
#    `docker import`ed; reused when it exists) stands in for python:3.11-slim.
# 2. docker build Dockerfile (the service) and Dockerfile.simbot (the bot) with BASE_IMAGE=that.
# 3. smoke test of the service image, on the host network against the embedded PostgreSQL and
#    Redis (devstack.servers; a scratch database `dockercheck` is created and dropped):
#    migrate, gunicorn web (/healthz 200, /readyz 200 with the docker backend listing through the
#    read-only Docker proxy as in compose, /metrics, the web health probe), a Celery worker (its
#    health probe: a control ping; it holds the socket), the bot image imports simbot.
# Not done here: `docker compose up` of the whole file, which needs postgres/redis images from a
# registry; the file itself is validated by tests/observability/test_compose.py.
#
# Needs root (debootstrap), a running engine (scripts/ci-docker.sh starts one) and the Debian
# mirror + PyPI. About 1.5 minutes with the base image cached, 2.5 without.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
BASE=${BASE_IMAGE:-botmanager-python-base:3.11}
SERVICE_TAG=botmanager:check
BOT_TAG=botmanager-simbot:check
started=$SECONDS
say() { echo "docker-build-check: $*"; }

docker/base-image/build.sh "$BASE"
# --network host: builds reach PyPI even where the engine's default bridge is unusable.
say "building $SERVICE_TAG (Dockerfile, BASE_IMAGE=$BASE)"
docker build -q --network host --build-arg BASE_IMAGE="$BASE" -t "$SERVICE_TAG" -f Dockerfile . >/dev/null
say "building $BOT_TAG (Dockerfile.simbot, BASE_IMAGE=$BASE)"
docker build -q --network host --build-arg BASE_IMAGE="$BASE" -t "$BOT_TAG" -f Dockerfile.simbot . >/dev/null
docker run --rm --network none --entrypoint python "$BOT_TAG" -c "import simbot.bot" >/dev/null
PROXY_TAG=botmanager-proxy:check
say "building $PROXY_TAG (docker/nginx/Dockerfile, BASE_IMAGE=$BASE)"
docker build -q --network host --build-arg BASE_IMAGE="$BASE" -t "$PROXY_TAG" -f docker/nginx/Dockerfile . >/dev/null
docker run --rm --network none --add-host web:127.0.0.1 "$PROXY_TAG" nginx -t -q
say "images built in $((SECONDS - started)) s; smoke-testing $SERVICE_TAG"

# The embedded servers (started if needed) and a scratch database.
eval "$("$PY" - <<'EOF'
import os
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "botmanager.settings")
from devstack import servers as devstack
from django.conf import settings
started = devstack.ensure_services()
import psycopg2
db = settings.DATABASES["default"]
conn = psycopg2.connect(dbname=db["NAME"], user=db["USER"], password=db.get("PASSWORD") or None,
                        host=db["HOST"], port=db["PORT"])
conn.autocommit = True
with conn.cursor() as cur:
    cur.execute("DROP DATABASE IF EXISTS dockercheck WITH (FORCE)")
    cur.execute("CREATE DATABASE dockercheck")
auth = db["USER"] + (f":{db['PASSWORD']}" if db.get("PASSWORD") else "")
base = settings.REDIS_URL.rpartition("/")[0]
print(f"DB_URL=postgres://{auth}@{db['HOST']}:{db['PORT']}/dockercheck")
print(f"ADMIN_DB_NAME={db['NAME']}")
print(f"REDIS_CHECK_URL={base}/13")
print(f"STOP_PG={int(started.postgres)} STOP_REDIS={int(started.redis)}")
EOF
)"
PORT=$("$PY" -c "import socket; s=socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
PROXY_PORT=$("$PY" -c "import socket; s=socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
SOCK_GID=$(stat -c %g /var/run/docker.sock)
NAME=bm-check-$$
socket=(--group-add "$SOCK_GID" -v /var/run/docker.sock:/var/run/docker.sock)
common=(--network host
        -e DATABASE_URL="$DB_URL" -e REDIS_URL="$REDIS_CHECK_URL" -e ORCHESTRATOR=docker
        -e DEPLOYMENT_NAME="$NAME" -e LOG_FORMAT=json -e PORT="$PORT"
        -e PUBLIC_BASE_URL="http://127.0.0.1:$PORT" -e BOT_IMAGE="$BOT_TAG"
        # The service refuses to start without its secrets (botmanager/checks.py): fresh ones.
        -e SECRET_KEY="$("$PY" -c 'import secrets; print(secrets.token_urlsafe(48))')"
        -e BOT_TOKEN_SECRET="$("$PY" -c 'import secrets; print(secrets.token_urlsafe(48))')"
        -e ADMIN_API_TOKEN="$("$PY" -c 'import secrets; print(secrets.token_urlsafe(48))')")

cleanup() {
    docker rm -f "$NAME-web" "$NAME-worker" "$NAME-docker-proxy" >/dev/null 2>&1 || true
    "$PY" - <<EOF || true
import os
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "botmanager.settings")
from devstack import servers as devstack
from django.conf import settings
import psycopg2
db = settings.DATABASES["default"]
conn = psycopg2.connect(dbname="$ADMIN_DB_NAME", user=db["USER"], password=db.get("PASSWORD") or None,
                        host=db["HOST"], port=db["PORT"])
conn.autocommit = True
conn.cursor().execute("DROP DATABASE IF EXISTS dockercheck WITH (FORCE)")
devstack.stop_services(devstack.Started(postgres=bool($STOP_PG), redis=bool($STOP_REDIS)))
EOF
}
trap cleanup EXIT

docker run --rm "${common[@]}" "$SERVICE_TAG" python manage.py migrate --no-input -v 0
# The web lists bots through the read-only proxy (compose's docker-proxy), not the socket.
docker run -d --name "$NAME-docker-proxy" --network host "${socket[@]}" "$SERVICE_TAG" \
    python -m orchestrators.docker_readonly_proxy --deployment "$NAME" --listen "127.0.0.1:$PROXY_PORT" >/dev/null
docker run -d --name "$NAME-web" "${common[@]}" -e DOCKER_HOST="tcp://127.0.0.1:$PROXY_PORT" \
    -e PROMETHEUS_MULTIPROC_DIR=/tmp/prometheus "$SERVICE_TAG" \
    gunicorn -c python:botmanager.gunicorn_conf botmanager.wsgi --bind "127.0.0.1:$PORT" --workers 2 \
    --access-logfile - >/dev/null
docker run -d --name "$NAME-worker" "${common[@]}" "${socket[@]}" "$SERVICE_TAG" \
    python -m botmanager.workers orchestrator >/dev/null

for _ in $(seq 1 60); do
    curl -fsS "http://127.0.0.1:$PORT/healthz" >/dev/null 2>&1 && break
    sleep 0.5
done
fail() { say "FAILED: $*"; docker logs --tail 30 "$NAME-web" 2>&1 | sed 's/^/  web: /'; docker logs --tail 30 "$NAME-worker" 2>&1 | sed 's/^/  worker: /'; exit 1; }
# Bodies are captured before matching: `grep -q` may exit before curl finished writing (SIGPIPE).
healthz=$(curl -fsS "http://127.0.0.1:$PORT/healthz") || fail "/healthz"
[[ $healthz == *'"ok"'* ]] || fail "/healthz: $healthz"
ready=$(curl -sS -w ' %{http_code}' "http://127.0.0.1:$PORT/readyz")
[[ $ready == *" 200" && $ready == *'"name": "docker"'* ]] || fail "/readyz: $ready"
code=$(curl -sS -o /dev/null -w '%{http_code}' -X POST "http://127.0.0.1:$PROXY_PORT/containers/create")
[[ $code == 403 ]] || fail "the read-only Docker proxy answered $code to a create"
metrics=$(curl -fsS "http://127.0.0.1:$PORT/metrics") || fail "/metrics"
grep -q '^botmanager_meetings{status="requested"} 0.0' <<<"$metrics" || fail "/metrics: no meetings family"
docker exec "$NAME-web" python -m botmanager.healthcheck web || fail "web health probe"
# Read the logs whole first: `docker logs | head -n 1` gets SIGPIPE, which pipefail reports as failure.
web_logs=$(docker logs "$NAME-web" 2>&1)
printf '%s\n' "$web_logs" | "$PY" -c "import json, sys; json.loads(sys.stdin.readline())" \
    || fail "web logs are not JSON lines"
ok=""
for _ in $(seq 1 20); do  # the worker needs a few seconds to boot and join the broker
    if docker exec "$NAME-worker" python -m botmanager.healthcheck worker orchestrator 2>/dev/null; then
        ok=1
        break
    fi
    sleep 2
done
[[ -n $ok ]] || fail "worker health probe"
[[ $(docker exec "$NAME-web" id -u) != 0 ]] || fail "the service runs as root"
say "OK in $((SECONDS - started)) s: images $SERVICE_TAG, $BOT_TAG; migrate, web (/healthz, /readyz with the docker backend through the read-only proxy, /metrics, JSON logs), worker ping; non-root"
