"""Container health probes (docker-compose.yml): `python -m botmanager.healthcheck web|worker <kind>|beat`.
Exit 0 = healthy; otherwise one line on stderr says why.

- web: GET http://127.0.0.1:$PORT/healthz answers 200 (the process serves requests), and
  PostgreSQL and Redis answer from this container.
- worker <kind>: this container's Celery worker (`<kind>@<hostname>`, botmanager/workers.py)
  answers a control ping within 5 s (i.e. `celery inspect ping` for this worker only, through the
  broker: a worker that lost Redis is unhealthy), and PostgreSQL answers from this container.
- beat: a sweep completed within the last max(3 × ORPHAN_SWEEP_INTERVAL_SECONDS, 180) s (the
  Redis counters of observability/metrics.py). Beat answers no ping; what matters is that the sweep
  it schedules runs, so this is the check that catches a beat that is up but not scheduling (it
  also goes unhealthy when no worker runs the sweeps; the worker's own check tells which).
"""
from __future__ import annotations

import os
import socket
import sys
import time
import urllib.request

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "botmanager.settings")


def web() -> str | None:
    from django.conf import settings

    url = f"http://127.0.0.1:{settings.PORT}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=3) as response:
            if response.status != 200:
                return f"{url} answered {response.status}"
    except OSError as exc:
        return f"{url}: {exc}"
    return _unreachable("database", "redis")


def worker(kind: str = "lifecycle") -> str | None:
    from botmanager.celery import app

    name = f"{kind}@{socket.gethostname()}"
    replies = app.control.ping(destination=[name], timeout=5)
    if not replies:
        return f"{name} did not answer a ping within 5 s"
    return _unreachable("database")


def _unreachable(*names: str) -> str | None:
    """The first of these dependencies (health.CHECKS) this container cannot reach, said why."""
    from observability import health

    for name in names:
        try:
            health.CHECKS[name]()
        except Exception as exc:
            return f"{name} unreachable: {type(exc).__name__}: {exc}"[:300]
    return None


def beat() -> str | None:
    from django.conf import settings

    from common.redis_client import get_redis
    from observability.metrics import REDIS_KEY

    last = float(get_redis().hget(REDIS_KEY, "sweep_last_success_ts") or 0)
    limit = max(3 * settings.ORPHAN_SWEEP_INTERVAL_SECONDS, 180)
    age = time.time() - last
    return None if age <= limit else f"no sweep completed in the last {limit:.0f} s (last: {age:.0f} s ago)"


PROBES = {"web": web, "worker": worker, "beat": beat}


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in PROBES or len(argv) > (2 if argv[0] == "worker" else 1):
        print("usage: python -m botmanager.healthcheck web|worker <kind>|beat", file=sys.stderr)
        return 2
    import django

    django.setup()
    try:
        problem = PROBES[argv[0]](*argv[1:])
    except Exception as exc:
        problem = f"{type(exc).__name__}: {exc}"
    if problem:
        print(f"unhealthy: {problem}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
