"""The retention job on 1,000,000 transitions: how long the purge takes, per batch, and what it does
to the lifecycle's latency meanwhile.

Inserted with generate_series: ended meetings (ended 120 days ago, past RETENTION_TRANSITIONS_DAYS)
with 10 transitions each, every one with an event body of about 700 bytes (a status change's
size). The purge runs in a second process, as the beat job runs in a worker (`common.retention.run`
with no time budget, RETENTION_BATCH_SIZE per batch), each batch timed. Meanwhile this process
moves live meetings through requested → joining → awaiting_admission → active with the lifecycle
function (in process: the transaction, the row lock, the transition insert into the table being
purged, the after-commit Redis publish) and times each call; the same is timed first with nothing
else running.

    python -m bench.retention [--transitions 1000000] [--per-meeting 10] [--batch 1000]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from bench import common

BODY = json.dumps({"event": "meeting.status_change", "meeting": {
    "id": 0, "user_id": 0, "platform": "google_meet", "native_meeting_id": "abc-defg-hij",
    "constructed_meeting_url": "https://meet.google.com/abc-defg-hij", "status": "active",
    "bot_container_id": "botmanager-bot-0000000000", "start_time": "2026-08-01T10:00:00Z", "end_time": None,
    "data": {"bot_name": "Notetaker", "language": "en", "name": "Weekly sync", "participants": ["A", "B", "C"]},
    "created_at": "2026-08-01T09:59:00Z", "updated_at": "2026-08-01T10:00:00Z",
    "deadline_at": "2026-08-01T14:00:00Z", "deadline_action": "stop"},
    "status_change": {"from": "awaiting_admission", "to": "active", "reason": "", "source": "bot_callback",
                      "timestamp": "2026-08-01T10:00:00Z"}}, separators=(",", ":"))
STEPS = ("joining", "awaiting_admission", "active")


def load(transitions: int, per_meeting: int) -> float:
    from django.db import connection

    user = common.make_user("bench-retention@example.com")
    meetings = transitions // per_meeting
    started = time.perf_counter()
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO meetings_meeting (user_id, platform, native_meeting_id, status, completion_reason, "
            "orchestrator, bot_instance, data, start_time, end_time, post_meeting_done_at, created_at, updated_at) "
            "SELECT %s, 'google_meet', 'ret-' || g, 'completed', 'stopped', '', '', '{}', "
            "now() - interval '120 days', now() - interval '120 days', now() - interval '120 days', "
            "now() - interval '120 days', now() - interval '120 days' FROM generate_series(1, %s) g",
            [user.pk, meetings])
        cursor.execute(
            "INSERT INTO meetings_meetingtransition (meeting_id, user_id, from_status, to_status, source, reason, "
            "metadata, applied, created_at, event) SELECT m.id, m.user_id, 'joining', 'active', 'bot_callback', '', "
            "'{}', true, m.end_time, %s FROM meetings_meeting m, generate_series(1, %s) "
            "WHERE m.native_meeting_id LIKE 'ret-%%' ORDER BY m.id",
            [BODY, per_meeting])
        cursor.execute("ANALYZE meetings_meeting")
        cursor.execute("ANALYZE meetings_meetingtransition")
        cursor.execute("SELECT pg_size_pretty(pg_total_relation_size('meetings_meetingtransition'))")
        print(f"loaded {meetings:,} meetings, {meetings * per_meeting:,} transitions "
              f"({cursor.fetchone()[0]} with indexes) in {time.perf_counter() - started:.1f} s", flush=True)
    return time.perf_counter() - started


def walk(meeting_ids: list[int], stop=None) -> list[float]:
    """Lifecycle calls over the meetings, step by step; ms each. Stops early when `stop()` is true."""
    from meetings.lifecycle import transitions as lifecycle
    from meetings.lifecycle.statuses import TransitionSource

    latencies = []
    for step in STEPS:
        for meeting_id in meeting_ids:
            if stop is not None and stop():
                return latencies
            started = time.perf_counter()
            lifecycle.transition(meeting_id, step, source=TransitionSource.BOT_CALLBACK)
            latencies.append((time.perf_counter() - started) * 1000)
    return latencies


def purge_child(batch: int) -> None:
    """In the second process: the purge, each batch timed; prints a JSON line."""
    import django

    django.setup()
    import logging

    logging.disable(logging.INFO)
    from common import retention

    timings: list[float] = []

    def timed(purger):
        def run(batch_size: int) -> int:
            started = time.perf_counter()
            count = purger(batch_size)
            timings.append((time.perf_counter() - started) * 1000)
            return count
        return run

    retention.PURGERS.update({name: timed(p) for name, p in retention.PURGERS.items()})
    started = time.perf_counter()
    deleted = retention.run(batch_size=batch, budget_seconds=3600)
    print(json.dumps({"deleted": deleted, "seconds": time.perf_counter() - started, "batches_ms": timings}),
          flush=True)


def summary(latencies: list[float]) -> str:
    return (f"n={len(latencies):,} p50 {common.percentile(latencies, 50):.2f} ms, "
            f"p99 {common.percentile(latencies, 99):.2f} ms, max {max(latencies):.2f} ms")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--transitions", type=int, default=1_000_000)
    parser.add_argument("--per-meeting", type=int, default=10)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--live", type=int, default=4000, help="live meetings walked during the purge (3 calls each)")
    parser.add_argument("--purge-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.purge_child:
        purge_child(args.batch)
        return {}
    env = common.setup()
    load_seconds = load(args.transitions, args.per_meeting)

    idle = walk(common.bulk_meetings(1000, "requested", prefix="idle"))
    print(f"lifecycle idle: {summary(idle)}", flush=True)

    live = common.bulk_meetings(args.live, "requested", prefix="busy")
    child = subprocess.Popen([sys.executable, "-m", "bench.retention", "--purge-child", "--batch", str(args.batch)],
                             env={**env, "LOG_LEVEL": "WARNING"}, cwd=common.REPO, stdout=subprocess.PIPE, text=True)
    busy: list[float] = []
    # Walked round after round while the purge runs (each round on new meetings).
    while child.poll() is None and live:
        busy += walk(live[:1000], stop=lambda: child.poll() is not None)
        live = live[1000:]
    ran_out = child.poll() is None
    out, _ = child.communicate(timeout=3600)
    purge = json.loads(out.strip().splitlines()[-1])
    batches = purge["batches_ms"]
    print(f"purge: {sum(purge['deleted'].values()):,} rows {purge['deleted']} in {purge['seconds']:.1f} s, "
          f"{len(batches)} batches of up to {args.batch}: p50 {common.percentile(batches, 50):.1f} ms, "
          f"p99 {common.percentile(batches, 99):.1f} ms, max {max(batches):.1f} ms")
    print(f"lifecycle while purging: {summary(busy)}"
          + ("" if child.returncode == 0 else f" (purge exited {child.returncode})"), flush=True)
    if ran_out:
        print("(the live meetings ran out before the purge ended: raise --live)")
    figures = {"load_seconds": round(load_seconds, 1), "purge_seconds": round(purge["seconds"], 1),
               "deleted": purge["deleted"], "batches": len(batches),
               "batch_ms": {p: round(common.percentile(batches, p), 1) for p in (50, 99, 100)},
               "lifecycle_idle_ms": {p: round(common.percentile(idle, p), 2) for p in (50, 99)},
               "lifecycle_purging_ms": {p: round(common.percentile(busy, p), 2) for p in (50, 99)} if busy else {},
               "lifecycle_purging_calls": len(busy)}
    common.save("retention", figures)
    return figures


if __name__ == "__main__":
    main()
