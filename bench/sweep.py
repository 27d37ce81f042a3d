"""One orphan-sweep pass over 1,000 / 10,000 / 50,000 non-terminal meetings: wall time, SQL
queries (must not grow with N) and backend listings (one per pass).

Every meeting has a running bot on the benchmark's in-memory backend (`BenchBackend`, registered
as the `bench` orchestrator: one `list()` returns all N bots, as the Docker backend's one call
would) and a deadline in the future, plus a fixed 10 meetings past their deadline that the pass
finalizes, so the figures include the apply step. The pass is `reconcile.sweep()`, what the
`meetings.sweep` task runs. A /metrics scrape at each size is timed too (it aggregates the same
tables on every scrape; 3 transition records per meeting are inserted for it).

    python -m bench.sweep [--sizes 1000,10000,50000]
"""
from __future__ import annotations

import argparse
import time
from datetime import timedelta

from bench import common
from bench.backend import BenchBackend

OVERDUE = 10


def _install_backend(settings) -> None:
    from orchestrators import registry

    registry.BACKENDS["bench"] = "bench.backend.BenchBackend"
    registry.get_orchestrator.cache_clear()
    settings.ORCHESTRATOR = "bench"


def one_size(n: int) -> dict:
    from django.db import connection
    from django.test import Client
    from django.utils import timezone

    from meetings.models import Meeting, MeetingSession, MeetingTransition
    from meetings.stopping import reconcile
    from orchestrators.base import LABEL_MEETING_ID, BotInfo, NormalizedStatus

    MeetingTransition.objects.all().delete()
    MeetingSession.objects.all().delete()
    Meeting.objects.all().delete()
    now = timezone.now()
    statuses = ["joining", "awaiting_admission", "active", "requested"]
    ids: list[int] = []
    for i, status in enumerate(statuses):
        share = n // len(statuses) + (1 if i < n % len(statuses) else 0)
        ids += common.bulk_meetings(share, status, prefix=f"sweep-{n}-{status}", orchestrator="bench",
                                    deadline_at=now + timedelta(hours=1))
    with connection.cursor() as cursor:  # one bot per meeting: container id "c-<meeting id>"
        cursor.execute("UPDATE meetings_meeting SET bot_container_id = 'c-' || id WHERE orchestrator = 'bench'")
    overdue = common.bulk_meetings(OVERDUE, "joining", prefix=f"sweep-{n}-overdue", orchestrator="bench",
                                   deadline_at=now - timedelta(seconds=5))
    BenchBackend.bots = [BotInfo(f"c-{i}", f"botmanager-bot-{i}", NormalizedStatus.UP, "running",
                                 {LABEL_MEETING_ID: str(i)}) for i in ids]
    with connection.cursor() as cursor:
        # A realistic history for the /metrics scrape: 3 transition records per meeting.
        cursor.execute("INSERT INTO meetings_meetingtransition (meeting_id, from_status, to_status, source, reason, "
                       "metadata, applied, created_at) SELECT m.id, '', m.status, 'bot_callback', '', '{}', true, now() "
                       "FROM meetings_meeting m, generate_series(1, 3)")
        cursor.execute("ANALYZE meetings_meeting")
        cursor.execute("ANALYZE meetings_meetingtransition")
    for key in BenchBackend.calls:
        BenchBackend.calls[key] = 0

    statements: list[str] = []
    with common.count_queries(statements) as counted:
        started = time.perf_counter()
        plan, summary = reconcile.sweep()
        wall = time.perf_counter() - started
    finalized = Meeting.objects.filter(pk__in=overdue, status="failed").count()

    client = Client()
    client.get("/metrics")
    started = time.perf_counter()
    response = client.get("/metrics")
    scrape = time.perf_counter() - started
    assert response.status_code == 200
    return {"meetings": n + OVERDUE, "wall_seconds": round(wall, 3), "sql_queries": counted["n"],
            "listings": BenchBackend.calls["list"], "finalized": finalized, "checked": summary.checked,
            "metrics_scrape_ms": round(scrape * 1000, 1), "errors": summary.errors}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000,50000")
    args = parser.parse_args(argv)
    common.setup()
    from django.conf import settings

    _install_backend(settings)
    figures = {}
    rows = []
    for n in (int(s) for s in args.sizes.split(",")):
        result = one_size(n)
        figures[str(n)] = result
        rows.append((f"{n:,} live + {OVERDUE} overdue", f"{result['wall_seconds']:.3f} s",
                     f"{result['sql_queries']} queries", f"{result['listings']} listing(s)",
                     f"{result['finalized']} finalized", f"/metrics scrape {result['metrics_scrape_ms']} ms"))
    common.print_table("sweep: one reconcile pass (wall time, SQL queries, backend listings)", rows)
    common.save("sweep", figures)
    return figures


if __name__ == "__main__":
    main()
