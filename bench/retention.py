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

    python -m bench.retention [--transitions 1000000] [--per-meeting 10] [--batch N] [--callbacks [--interleave S]]

--callbacks: instead of in-process lifecycle calls, bot status callbacks against gunicorn, idle and
then while the purge runs: the latency a bot sees. Sent at a steady --rate per second (open loop, a
new connection each, as bots send them), not as fast as the server answers: at saturation every
callback waits behind the others, and the figure would measure the queue, not the purge.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
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
    # Written to a file, not the pipe: a pipe holds 64 KiB, and a child blocked writing into it is
    # still alive to the parent, which would go on measuring a purge that has ended.
    with open(os.environ["BENCH_PURGE_OUT"], "w") as out:
        json.dump({"deleted": deleted, "seconds": time.perf_counter() - started, "batches_ms": timings}, out)


def _start_purge(env: dict, batch: int) -> tuple[subprocess.Popen, str]:
    """The purge in a second process, as the beat job runs it in a worker; its figures go to a file."""
    out_path = os.path.join(tempfile.mkdtemp(prefix="bench-retention-"), "purge.json")
    child = subprocess.Popen([sys.executable, "-m", "bench.retention", "--purge-child", "--batch", str(batch)],
                             env={**env, "LOG_LEVEL": "WARNING", "BENCH_PURGE_OUT": out_path}, cwd=common.REPO)
    return child, out_path


def _purge_figures(out_path: str) -> dict:
    with open(out_path) as out:
        return json.load(out)


def summary(latencies: list[float]) -> str:
    return (f"n={len(latencies):,} p50 {common.percentile(latencies, 50):.2f} ms, "
            f"p99 {common.percentile(latencies, 99):.2f} ms, max {max(latencies):.2f} ms")


def paced_phase(port: int, name: str, uids: list[str], rate: float, spans: list | None = None) -> list[float]:
    """POST one callback per uid, a new one every 1/rate s whatever the answers (open loop);
    latency in ms from connect to the response read. Non-200 answers raise. `spans` (when given)
    receives each callback's (sent, answered) perf_counter times."""
    import selectors
    import socket

    from bench.callbacks import _requests

    requests = _requests(port, name, uids, keep_alive=False)
    selector = selectors.DefaultSelector()
    latencies: list[float] = []
    started = time.perf_counter()
    sent = 0
    while requests or selector.get_map():
        due = started + sent / rate
        if requests and time.perf_counter() >= due:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setblocking(False)
            sock.connect_ex(("127.0.0.1", port))
            selector.register(sock, selectors.EVENT_WRITE,
                              {"request": requests.pop(), "response": bytearray(), "started": time.perf_counter()})
            sent += 1
            continue
        timeout = max(0.0, due - time.perf_counter()) if requests else 60
        for key, events in selector.select(timeout=timeout):
            sock, state = key.fileobj, key.data
            if events & selectors.EVENT_WRITE:
                sock.sendall(state["request"])
                selector.modify(sock, selectors.EVENT_READ, state)
                continue
            chunk = sock.recv(65536)
            if chunk:
                state["response"] += chunk
                continue
            selector.unregister(sock)
            sock.close()
            if not state["response"].startswith(b"HTTP/1.1 200 "):
                raise RuntimeError(f"a callback failed: {bytes(state['response'][:200])!r}")
            answered = time.perf_counter()
            latencies.append((answered - state["started"]) * 1000)
            if spans is not None:
                spans.append((state["started"], answered))
    return latencies


def callbacks_while_purging(env: dict, batch: int, meetings: int, rate: float) -> dict:
    """Callback latency under gunicorn (p50/p99 as the client sees it): idle, then while the purge
    runs in a second process. Each round walks fresh meetings requested → joining → awaiting_admission
    → active, 3 callbacks each."""
    from bench.callbacks import PHASES
    from django.conf import settings

    from meetings.models import MeetingSession

    def uids(prefix: str) -> list[str]:
        ids = common.bulk_meetings(meetings, "requested", prefix=prefix, with_sessions=True)
        return [str(u) for u in MeetingSession.objects.filter(meeting_id__in=ids).values_list("session_uid", flat=True)]

    def walk_callbacks(port: int, round_uids: list[str]) -> list[float]:
        latencies = []
        for name in PHASES:
            latencies += paced_phase(port, name, round_uids, rate)
        return latencies

    rounds = [uids(f"cb-{n}") for n in range(16)]
    with common.gunicorn(env, settings.WEB_CONCURRENCY) as web:
        port = int(web.url.rsplit(":", 1)[1])
        walk_callbacks(port, uids("cb-warm")[:300])
        idle = walk_callbacks(port, rounds.pop()) + walk_callbacks(port, rounds.pop())
        print(f"callbacks idle: {summary(idle)}", flush=True)
        child, out_path = _start_purge(env, batch)
        busy: list[float] = []
        while child.poll() is None and rounds:
            busy += walk_callbacks(port, rounds.pop())
        ran_out = child.poll() is None
        child.wait(timeout=3600)
    purge = _purge_figures(out_path)
    print(f"purge: {sum(purge['deleted'].values()):,} rows in {purge['seconds']:.1f} s, "
          f"{len(purge['batches_ms'])} batches", flush=True)
    print(f"callbacks while purging: {summary(busy)}", flush=True)
    if ran_out:
        print("(the callback rounds ran out before the purge ended: the figure covers its first part)")
    return {"rate_per_second": rate, "callbacks_idle_ms": {p: round(common.percentile(idle, p), 1) for p in (50, 99)},
            "callbacks_purging_ms": {p: round(common.percentile(busy, p), 1) for p in (50, 99)},
            "callbacks_purging": len(busy), "purge_seconds": round(purge["seconds"], 1)}


def callbacks_interleaved(env: dict, batch: int, meetings: int, rate: float, window: float) -> dict:
    """Callback latency under gunicorn with the purge paused and resumed (SIGSTOP/SIGCONT of its
    process) every `window` seconds: the callbacks sent while it runs are compared with those sent
    while it is paused, minutes apart at most, so the machine's other load weighs on both alike.
    A callback whose span crosses a switch counts for neither."""
    import signal
    import threading

    from bench.callbacks import PHASES
    from django.conf import settings

    from meetings.models import MeetingSession

    def uids(prefix: str) -> list[str]:
        ids = common.bulk_meetings(meetings, "requested", prefix=prefix, with_sessions=True)
        return [str(u) for u in MeetingSession.objects.filter(meeting_id__in=ids).values_list("session_uid", flat=True)]

    rounds = [uids(f"cbi-{n}") for n in range(40)]
    switches: list[tuple[float, bool]] = []  # (perf_counter, purge running from then on)
    done = threading.Event()
    with common.gunicorn(env, settings.WEB_CONCURRENCY) as web:
        port = int(web.url.rsplit(":", 1)[1])
        warm = uids("cbi-warm")[:300]
        for name in PHASES:
            paced_phase(port, name, warm, rate)
        idle: list[float] = []
        for _ in range(2):
            for name in PHASES:
                idle += paced_phase(port, name, rounds[-1], rate)
            rounds.pop()
        print(f"callbacks, before the purge: {summary(idle)}", flush=True)
        child, out_path = _start_purge(env, batch)
        time.sleep(3)  # django.setup() in the child: its start-up is no purge

        def toggle() -> None:
            running = True
            switches.append((time.perf_counter(), True))
            while not done.wait(window) and child.poll() is None:
                running = not running
                child.send_signal(signal.SIGCONT if running else signal.SIGSTOP)
                switches.append((time.perf_counter(), running))
            child.send_signal(signal.SIGCONT)

        toggler = threading.Thread(target=toggle, daemon=True)
        toggler.start()
        spans: list[tuple[float, float]] = []
        while child.poll() is None and rounds:
            for name in PHASES:
                paced_phase(port, name, rounds.pop(), rate, spans)
                if child.poll() is not None or not rounds:
                    break
        done.set()
        toggler.join()
        ran_out = child.poll() is None
        child.wait(timeout=3600)
    ended = time.perf_counter() if ran_out else switches[-1][0] + window
    switches.append((ended, False))
    purging: list[float] = []
    paused: list[float] = []
    for sent, answered in spans:
        for (start, running), (end, _) in zip(switches, switches[1:]):
            if start <= sent and answered < end:
                (purging if running else paused).append((answered - sent) * 1000)
                break
    purge = _purge_figures(out_path)
    if not paused or not purging:
        raise SystemExit("the purge ended before callbacks were sent both while it ran and while it was "
                         "paused: give it more --transitions")
    print(f"purge: {sum(purge['deleted'].values()):,} rows in {purge['seconds']:.1f} s (paused about half of it), "
          f"{len(purge['batches_ms'])} batches of up to {batch}: p50 {common.percentile(purge['batches_ms'], 50):.1f} ms",
          flush=True)
    print(f"callbacks, purge paused:  {summary(paused)}", flush=True)
    print(f"callbacks, purge running: {summary(purging)}", flush=True)
    if ran_out:
        print("(the callback rounds ran out before the purge ended: the figure covers its first part)")
    return {"rate_per_second": rate, "window_seconds": window, "batch": batch,
            "duty_cycle": settings.RETENTION_DUTY_CYCLE,
            "callbacks_idle_ms": {p: round(common.percentile(idle, p), 1) for p in (50, 99)},
            "callbacks_paused_ms": {p: round(common.percentile(paused, p), 1) for p in (50, 99)},
            "callbacks_purging_ms": {p: round(common.percentile(purging, p), 1) for p in (50, 99)},
            "callbacks": {"paused": len(paused), "purging": len(purging)}, "purge_seconds": round(purge["seconds"], 1)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--transitions", type=int, default=1_000_000)
    parser.add_argument("--per-meeting", type=int, default=10)
    parser.add_argument("--batch", type=int, default=None, help="rows per batch (default: RETENTION_BATCH_SIZE)")
    parser.add_argument("--live", type=int, default=4000, help="live meetings walked during the purge (3 calls each)")
    parser.add_argument("--callbacks", action="store_true",
                        help="bot callbacks against gunicorn instead of in-process lifecycle calls")
    parser.add_argument("--rate", type=float, default=100, help="callbacks per second with --callbacks")
    parser.add_argument("--interleave", type=float, metavar="SECONDS",
                        help="with --callbacks: pause and resume the purge every SECONDS and compare the two")
    parser.add_argument("--purge-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.batch is None:
        from django.conf import settings

        args.batch = settings.RETENTION_BATCH_SIZE
    if args.purge_child:
        purge_child(args.batch)
        return {}
    env = common.setup()
    load_seconds = load(args.transitions, args.per_meeting)
    if args.callbacks and args.interleave:
        figures = {"load_seconds": round(load_seconds, 1),
                   **callbacks_interleaved(env, args.batch, meetings=500, rate=args.rate, window=args.interleave)}
        common.save("retention_interleaved", figures)
        return figures
    if args.callbacks:
        figures = {"load_seconds": round(load_seconds, 1),
                   **callbacks_while_purging(env, args.batch, meetings=500, rate=args.rate)}
        common.save("retention_callbacks", figures)
        return figures

    idle = walk(common.bulk_meetings(1000, "requested", prefix="idle"))
    print(f"lifecycle idle: {summary(idle)}", flush=True)

    live = common.bulk_meetings(args.live, "requested", prefix="busy")
    child, out_path = _start_purge(env, args.batch)
    busy: list[float] = []
    # Walked round after round while the purge runs (each round on new meetings).
    while child.poll() is None and live:
        busy += walk(live[:1000], stop=lambda: child.poll() is not None)
        live = live[1000:]
    ran_out = child.poll() is None
    child.wait(timeout=3600)
    purge = _purge_figures(out_path)
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
