#!/usr/bin/env bash
# Installs Debian's docker-compose (v1, the one packaged) when missing and validates
# docker-compose.yml with it. tests/observability/test_compose.py checks the file's shape with the
# same tool; under CI a missing docker-compose fails that test instead of skipping it.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v docker-compose >/dev/null 2>&1; then
    echo "ci-compose: installing docker-compose"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends docker-compose >/dev/null
fi
# The file requires its secrets (no defaults: a published default would sign things): placeholders are enough to validate it.
SECRET_KEY=x BOT_TOKEN_SECRET=x ADMIN_API_TOKEN=x POSTGRES_PASSWORD=x REDIS_PASSWORD=x \
    docker-compose -f docker-compose.yml config -q
# ... and with the offline stand-ins (docker-compose.offline.yml, which make compose-check runs).
SECRET_KEY=x BOT_TOKEN_SECRET=x ADMIN_API_TOKEN=x POSTGRES_PASSWORD=x REDIS_PASSWORD=x \
    docker-compose -f docker-compose.yml -f docker-compose.offline.yml config -q
echo "ci-compose: docker-compose.yml is valid ($(docker-compose version --short))"
