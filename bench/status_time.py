"""The status-duration histogram over a long history: 200,000 completed meetings with 5 applied
transitions each (1,000,000 rows: created → joining → active → stopping → completed), Redis
watermark empty (a first deployment, or Redis lost the hash).

Figures: the first batch of the catch-up (`METRICS_STATUS_TIME_BATCH` rows: one SQL statement and
one Redis script), how many scrapes the catch-up takes, a whole /metrics scrape during the catch-up
and once caught up (then only the transitions since the last scrape are read), and the other
families' share of a scrape (they aggregate the whole tables every time).

    python -m bench.status_time [--meetings 200000] [--batch 100000]
"""
from __future__ import annotations

import argparse
import time

from bench import common

TRANSITIONS_PER_MEETING = 5


def load(meetings: int) -> int:
    from django.db import connection

    from meetings.models import Meeting, MeetingSession, MeetingTransition

    MeetingTransition.objects.all().delete()
    MeetingSession.objects.all().delete()
    Meeting.objects.all().delete()
    common.bulk_meetings(meetings, "completed", prefix="status-time", deadline_at=None)
    with connection.cursor() as cursor:
        # Each meeting: created 3 h ago (spread over the day), then 2-31 s requested, 5-64 s joining,
        # 10 min to 1 h active, 1-10 s stopping.
        cursor.execute("""
            WITH m AS (SELECT id, user_id, now() - interval '3 hours' - (id % 86400) * interval '1 second' AS t0
                       FROM meetings_meeting),
            steps AS (
                SELECT m.id, m.user_id, m.t0,
                       m.t0 + (2 + m.id % 30) * interval '1 second' AS t1,
                       m.t0 + (2 + m.id % 30 + 5 + m.id % 60) * interval '1 second' AS t2,
                       m.t0 + (2 + m.id % 30 + 5 + m.id % 60 + 600 + m.id % 3000) * interval '1 second' AS t3,
                       m.t0 + (2 + m.id % 30 + 5 + m.id % 60 + 600 + m.id % 3000 + 1 + m.id % 10)
                            * interval '1 second' AS t4
                FROM m)
            INSERT INTO meetings_meetingtransition (meeting_id, user_id, from_status, to_status, source, reason,
                                                    metadata, applied, created_at, event)
            SELECT s.id, s.user_id, v.f, v.t, 'bot_callback', '', '{}', true, v.at, ''
            FROM steps s CROSS JOIN LATERAL (VALUES ('', 'requested', s.t0), ('requested', 'joining', s.t1),
                 ('joining', 'active', s.t2), ('active', 'stopping', s.t3), ('stopping', 'completed', s.t4))
                 AS v(f, t, at)
            ORDER BY v.at""")
        cursor.execute("UPDATE meetings_meeting m SET created_at = t.created_at FROM meetings_meetingtransition t "
                       "WHERE t.meeting_id = m.id AND t.from_status = ''")
        cursor.execute("ANALYZE meetings_meetingtransition")
        cursor.execute("ANALYZE meetings_meeting")
    return MeetingTransition.objects.count()


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--meetings", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=None, help="METRICS_STATUS_TIME_BATCH (default: the setting)")
    args = parser.parse_args(argv)
    common.setup()
    from django.conf import settings
    from django.test import Client
    from django.utils import timezone

    from common.redis_client import get_redis
    from observability import metrics

    if args.batch:
        settings.METRICS_STATUS_TIME_BATCH = args.batch
    started = time.perf_counter()
    rows = load(args.meetings)
    load_seconds = time.perf_counter() - started
    r = get_redis()
    r.delete(metrics.STATUS_TIME_KEY)

    # The first batch on its own: the SQL statement, then the Redis script.
    settled = timezone.now()
    started = time.perf_counter()
    last_id, by_status = metrics.status_time_batch(0, settings.METRICS_STATUS_TIME_BATCH, settled)
    first_sql = time.perf_counter() - started
    started = time.perf_counter()
    metrics.count_status_time()  # the same batch again, plus the Redis script
    first_batch = time.perf_counter() - started

    client = Client()
    scrapes = [first_batch]
    while True:
        before = int(r.hget(metrics.STATUS_TIME_KEY, "last_id") or 0)
        started = time.perf_counter()
        assert client.get("/metrics").status_code == 200
        scrapes.append(time.perf_counter() - started)
        if int(r.hget(metrics.STATUS_TIME_KEY, "last_id") or 0) == before:
            break
    caught_up = []
    for _ in range(5):
        started = time.perf_counter()
        assert client.get("/metrics").status_code == 200
        caught_up.append(time.perf_counter() - started)
    started = time.perf_counter()
    metrics.count_status_time()
    incremental = time.perf_counter() - started
    counted = sum(int(float(r.hget(metrics.STATUS_TIME_KEY, f"{s}|count") or 0))
                  for s in ("requested", "joining", "active", "stopping"))
    figures = {
        "transitions": rows, "meetings": args.meetings, "batch": settings.METRICS_STATUS_TIME_BATCH,
        "load_seconds": round(load_seconds, 1),
        "first_batch_sql_ms": round(first_sql * 1000, 1),
        "first_batch_ms": round(first_batch * 1000, 1),
        # The first batch, then every scrape that advanced the watermark (the last one did not).
        "catch_up_batches": len(scrapes) - 1,
        "catch_up_scrape_ms_median": round(sorted(scrapes[1:-1])[len(scrapes[1:-1]) // 2] * 1000, 1)
        if len(scrapes) > 2 else None,
        "catch_up_scrape_ms_max": round(max(scrapes[1:-1]) * 1000, 1) if len(scrapes) > 2 else None,
        "scrape_caught_up_ms_median": round(sorted(caught_up)[len(caught_up) // 2] * 1000, 1),
        "status_time_caught_up_ms": round(incremental * 1000, 2),
        "observations": counted,
        "last_id_is_max": last_id is not None,
        "statuses_in_first_batch": sorted(by_status),
    }
    common.print_table("status-duration histogram over a long history", [(k, v) for k, v in figures.items()])
    common.save("status_time", figures)
    return figures


if __name__ == "__main__":
    main()
