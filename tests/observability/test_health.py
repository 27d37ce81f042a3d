"""`/healthz` (process up) and `/readyz` (PostgreSQL, Redis and the bot backend's listing)."""
from __future__ import annotations

import pytest
from django.test import Client

from common.redis_client import get_redis
from orchestrators import registry
from orchestrators.base import OrchestratorError

pytestmark = pytest.mark.django_db


@pytest.fixture
def client():
    return Client()


def test_healthz_answers_200_json_without_authentication(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_readyz_answers_200_when_every_dependency_is_up(client):
    response = client.get("/readyz")
    body = response.json()
    assert response.status_code == 200, body
    assert body["status"] == "ok" and "failed" not in body
    assert set(body["checks"]) == {"database", "redis", "backend"}
    assert all(check["ok"] for check in body["checks"].values())
    assert body["checks"]["backend"]["name"] == "process"


def test_readyz_answers_503_naming_redis_when_redis_is_unreachable(client, settings):
    settings.REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens on port 1
    get_redis.cache_clear()
    try:
        response = client.get("/readyz")
    finally:
        get_redis.cache_clear()
    body = response.json()
    assert response.status_code == 503, body
    assert response["Content-Type"] == "application/json"
    assert body["status"] == "unavailable"
    assert body["failed"] == ["redis"]
    assert body["detail"] == "Not ready: redis failed (the service's log has the error)."  # as every error answer
    assert body["checks"]["redis"] == {"ok": False, "error": "failed", "ms": body["checks"]["redis"]["ms"]}
    assert body["checks"]["database"]["ok"] is True and body["checks"]["backend"]["ok"] is True


class _BrokenBackend:
    name = "broken"

    def list(self):
        raise OrchestratorError("engine unreachable: connection refused")


def test_readyz_answers_503_naming_the_backend_when_its_listing_fails(client, monkeypatch):
    monkeypatch.setattr(registry, "get_orchestrator", lambda name=None: _BrokenBackend())
    response = client.get("/readyz")
    body = response.json()
    assert response.status_code == 503, body
    assert body["failed"] == ["backend"]
    assert body["checks"]["backend"] == {"ok": False, "error": "failed",
                                         "ms": body["checks"]["backend"]["ms"]}


def test_readyz_answers_503_when_the_backend_listing_hangs(client, monkeypatch, settings):
    import time

    class Slow:
        name = "slow"

        def list(self):
            time.sleep(1.5)
            return []

    settings.READYZ_TIMEOUT_SECONDS = 0.3
    monkeypatch.setattr(registry, "get_orchestrator", lambda name=None: Slow())
    response = client.get("/readyz")
    body = response.json()
    assert response.status_code == 503 and body["failed"] == ["backend"], body
    assert "did not answer within 0.3 s" in body["checks"]["backend"]["error"]
    assert body["checks"]["backend"]["ms"] < 1000


def test_a_backend_that_failed_is_not_asked_again_for_a_moment(client, monkeypatch, settings):
    calls = []

    class Failing:
        name = "failing"

        def list(self):
            calls.append(1)
            raise OrchestratorError("engine unreachable")

    settings.ORCHESTRATOR_REQUEST_TIMEOUT_SECONDS = 30
    monkeypatch.setattr(registry, "get_orchestrator", lambda name=None: Failing())
    bodies = [client.get("/readyz").json() for _ in range(3)]
    assert len(calls) == 1
    assert all(b["failed"] == ["backend"] and b["checks"]["backend"]["error"] == "failed" for b in bodies)


def test_concurrent_probes_of_a_hung_backend_share_one_listing(monkeypatch, settings):
    import threading
    import time

    from orchestrators import request_listing

    release = threading.Event()
    calls = []

    class Hung:
        name = "hung"

        def list(self):
            calls.append(1)
            release.wait(10)
            return []

    settings.ORCHESTRATOR_REQUEST_TIMEOUT_SECONDS = 0.01  # forget the outage at once: every probe asks
    errors = []

    def probe():
        try:
            request_listing.list_bots(Hung(), wait=0.5)
        except OrchestratorError as exc:
            errors.append(str(exc))

    started = time.monotonic()
    threads = [threading.Thread(target=probe) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    took = time.monotonic() - started
    release.set()
    assert len(errors) == 8 and took < 2, (errors, took)
    assert len(calls) == 1  # one call in flight, whatever the number of requests


def test_readyz_and_healthz_need_no_api_key_but_the_user_api_still_does(client):
    assert client.get("/healthz").status_code == 200
    assert client.get("/meetings").status_code == 403
