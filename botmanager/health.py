"""`/healthz` and `/readyz`: no authentication, JSON bodies.

- `/healthz`: the process is up and serving requests (liveness: restart me if this fails). It
  touches no dependency, so a database outage never gets healthy web processes restarted.
- `/readyz`: this process can do its work (readiness: send me traffic). It checks, each with its
  own timeout, that PostgreSQL answers `SELECT 1`, that Redis answers PING, and that the bot
  backend (ORCHESTRATOR) can list its bots. 200 when all pass; 503 naming the failed ones:

      {"status": "unavailable", "failed": ["redis"], "detail": "Not ready: redis failed (see checks).",
       "checks": {"database": {"ok": true, "ms": 0.9},
                  "redis": {"ok": false, "ms": 1.2, "error": "ConnectionError: ..."},
                  "backend": {"ok": true, "ms": 3.1, "name": "docker", "bots": 2}}}
"""
from __future__ import annotations

import time

from django.conf import settings
from django.db import connection, transaction
from django.http import JsonResponse

from .plainviews import allow_methods


@allow_methods("GET")
def healthz(request):
    return JsonResponse({"status": "ok"})


def _check_database() -> dict:
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SET LOCAL statement_timeout = %s", [int(settings.READYZ_TIMEOUT_SECONDS * 1000)])
        cursor.execute("SELECT 1")
        cursor.fetchone()
    return {}


def _check_redis() -> dict:
    from meetings.redis_client import get_redis

    if not get_redis().ping():
        raise RuntimeError("PING was not answered")
    return {}


def _check_backend() -> dict:
    """The backend lists its bots within READYZ_TIMEOUT_SECONDS; the listing is shared with
    concurrent requests and a failed engine is not asked again for a moment
    (orchestrators/request_listing.py), so probes of a hung engine hold nothing."""
    from orchestrators import request_listing
    from orchestrators.registry import get_orchestrator

    backend = get_orchestrator()
    return {"name": backend.name, "bots": len(request_listing.list_bots(backend, settings.READYZ_TIMEOUT_SECONDS))}


CHECKS = {"database": _check_database, "redis": _check_redis, "backend": _check_backend}


@allow_methods("GET")
def readyz(request):
    checks, failed = {}, []
    for name, check in CHECKS.items():
        started = time.perf_counter()
        try:
            result = {"ok": True, **check()}
        except Exception as exc:  # any failure of a dependency is "not ready", with its reason
            result = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:500]}
            failed.append(name)
        result["ms"] = round((time.perf_counter() - started) * 1000, 1)
        checks[name] = result
    body = {"status": "unavailable" if failed else "ok", "checks": checks}
    if failed:
        body["failed"] = failed
        body["detail"] = f"Not ready: {', '.join(failed)} failed (see checks)."  # as every error answer
    return JsonResponse(body, status=503 if failed else 200)
