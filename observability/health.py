"""`/healthz` and `/readyz`: no authentication, JSON bodies.

- `/healthz`: the process is up and serving requests (liveness: restart me if this fails). It
  touches no dependency, so a database outage never gets healthy web processes restarted.
- `/readyz`: this process can do its work (readiness: send me traffic). It checks, each with its
  own timeout, that PostgreSQL answers `SELECT 1`, that Redis answers PING, and that the bot
  backend (ORCHESTRATOR) can list its bots. 200 when all pass; 503 naming the failed ones (what
  failed, never the exception: that goes to the log, since /readyz answers without authentication):

      {"status": "unavailable", "failed": ["redis"], "detail": "Not ready: redis failed (the service's log has the error).",
       "checks": {"database": {"ok": true, "ms": 0.9},
                  "redis": {"ok": false, "error": "failed", "ms": 1.2},
                  "backend": {"ok": true, "ms": 3.1, "name": "docker", "bots": 2}}}
"""
from __future__ import annotations

import logging
import time

from django.conf import settings
from django.db import connection, transaction
from django.http import JsonResponse

from common.plainviews import allow_methods
from common.redis_client import get_redis
from orchestrators import registry, request_listing

log = logging.getLogger(__name__)


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
    if not get_redis().ping():
        raise RuntimeError("PING was not answered")
    return {}


def _check_backend() -> dict:
    """The backend lists its bots within READYZ_TIMEOUT_SECONDS; the listing is shared with
    concurrent requests and a failed engine is not asked again for a moment
    (orchestrators/request_listing.py), so probes of a hung engine hold nothing."""

    backend = registry.get_orchestrator()
    return {"name": backend.name, "bots": len(request_listing.list_bots(backend, settings.READYZ_TIMEOUT_SECONDS))}


def _cause(elapsed: float) -> str:
    """What a probe may learn of a failed check: whether it answered in time, not how it failed."""
    if elapsed >= settings.READYZ_TIMEOUT_SECONDS:
        return f"did not answer within {settings.READYZ_TIMEOUT_SECONDS:g} s"
    return "failed"


CHECKS = {"database": _check_database, "redis": _check_redis, "backend": _check_backend}


@allow_methods("GET")
def readyz(request):
    checks, failed = {}, []
    for name, check in CHECKS.items():
        started = time.perf_counter()
        try:
            result = {"ok": True, **check()}
        except Exception:  # any failure of a dependency is "not ready"
            # The exception (hosts, paths, engine text) goes to the operator's log only: /readyz
            # answers anyone who can reach it.
            log.warning("readyz: the %s check failed", name, exc_info=True)
            result = {"ok": False, "error": _cause(time.perf_counter() - started)}
            failed.append(name)
        result["ms"] = round((time.perf_counter() - started) * 1000, 1)
        checks[name] = result
    body = {"status": "unavailable" if failed else "ok", "checks": checks}
    if failed:
        body["failed"] = failed
        body["detail"] = f"Not ready: {', '.join(failed)} failed (the service's log has the error)."  # as every error answer
    return JsonResponse(body, status=503 if failed else 200)
