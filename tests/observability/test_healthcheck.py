"""The container health probes (`python -m botmanager.healthcheck`, docker-compose.yml): a service
that cannot reach its broker or database is unhealthy, not "up"."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import stack_env

pytestmark = pytest.mark.django_db(transaction=True)
REPO = Path(__file__).resolve().parents[2]
NOWHERE = "redis://127.0.0.1:1/0"  # nothing listens on port 1


def probe(tmp_path, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "botmanager.healthcheck", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=60, env=stack_env(tmp_path, **env))


def test_the_web_probe_passes_when_the_web_and_its_dependencies_answer(live_server, tmp_path):
    result = probe(tmp_path, "web", PORT=live_server.url.rsplit(":", 1)[1])
    assert result.returncode == 0, result.stderr


def test_the_web_probe_fails_when_redis_is_unreachable(live_server, tmp_path):
    result = probe(tmp_path, "web", PORT=live_server.url.rsplit(":", 1)[1], REDIS_URL=NOWHERE)
    assert result.returncode == 1
    assert "redis unreachable" in result.stderr


def test_the_web_probe_fails_when_the_database_is_unreachable(live_server, tmp_path):
    result = probe(tmp_path, "web", PORT=live_server.url.rsplit(":", 1)[1],
                   DATABASE_URL="postgres://nobody@127.0.0.1:1/none")
    assert result.returncode == 1
    assert "database unreachable" in result.stderr


def test_the_worker_probe_fails_when_the_broker_is_unreachable(tmp_path):
    result = probe(tmp_path, "worker", "lifecycle", REDIS_URL=NOWHERE, CELERY_BROKER_URL=NOWHERE)
    assert result.returncode == 1
    assert "unhealthy" in result.stderr
