"""Bot callbacks per second with and without held event streams (`GET /events/stream`).

One gunicorn (WEB_CONCURRENCY gevent workers, as `make run`) and one Celery worker; bench.callbacks'
load (N meetings walked requested → joining → awaiting_admission → active, 32 callbacks in
flight, a new connection each) run three times on fresh meetings: without streams, with S streams
held open (USERS users holding S/USERS each; they are not the user whose meetings move, so the
streams wait and send heartbeats), and without again after they are closed (the spread of the two
runs without is the noise). Printed: callbacks/s of each run, the change with streams against the
mean of the runs without, whether every stream was still open, and the load average.

    python -m bench.streams [--streams 200] [--users 20] [--meetings 1500] [--concurrency 32]
"""
from __future__ import annotations

import argparse
import os
import socket
import time

from bench import callbacks, common


def open_streams(port: int, keys: list[str], count: int) -> list[socket.socket]:
    """`count` streams, spread over `keys`, each open once its first frame arrived."""
    streams = []
    for n in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        sock.sendall(f"GET /events/stream HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAccept: text/event-stream\r\n"
                     f"X-API-Key: {keys[n % len(keys)]}\r\n\r\n".encode())
        received = b""
        while b": stream open" not in received:
            chunk = sock.recv(4096)
            if not chunk:
                raise RuntimeError(f"stream {n} was refused: {received[:300]!r}")
            received += chunk
        if not received.startswith(b"HTTP/1.1 200 "):
            raise RuntimeError(f"stream {n} was refused: {received[:300]!r}")
        streams.append(sock)
    return streams


def still_open(streams: list[socket.socket]) -> int:
    """How many streams the server has not closed (what it sent since, heartbeats, is drained)."""
    alive = 0
    for sock in streams:
        sock.setblocking(False)
        try:
            while sock.recv(65536):
                pass
        except BlockingIOError:
            alive += 1  # nothing more to read and not closed
    return alive


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=200)
    parser.add_argument("--users", type=int, default=20)
    parser.add_argument("--meetings", type=int, default=1500)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args(argv)
    env = common.setup()
    from django.conf import settings

    from accounts.services import issue_token
    from meetings.models import MeetingSession

    workers = settings.WEB_CONCURRENCY
    keys = [issue_token(common.make_user(f"streams{n}@example.com")).token for n in range(args.users)]

    def uids(prefix: str) -> list[str]:
        ids = common.bulk_meetings(args.meetings, "requested", prefix=prefix, with_sessions=True)
        return [str(u) for u in MeetingSession.objects.filter(meeting_id__in=ids).values_list("session_uid", flat=True)]

    runs = {name: uids(f"bench-streams-{name}") for name in ("without", "with", "without_after")}
    warmup = uids("bench-streams-warm")
    per_user = -(-args.streams // args.users)
    extra = {"EVENT_STREAMS_PER_USER": str(per_user)}
    figures: dict = {"streams": args.streams, "users": args.users, "meetings": args.meetings,
                     "concurrency": args.concurrency, "web_workers": workers,
                     "web_worker_connections": settings.WEB_WORKER_CONNECTIONS,
                     "event_streams_per_worker": settings.EVENT_STREAMS_PER_WORKER,
                     "speed_probe": common.speed_probe(), "load_before": os.getloadavg()}

    def run(port: int, sessions: list[str], web) -> int:
        done, wall = 0, 0.0
        for name in callbacks.PHASES:
            latencies, errors, seconds = callbacks.run_phase(port, name, sessions, args.concurrency)
            if errors:
                raise RuntimeError(f"{errors} callbacks failed in phase {name}: "
                                   f"{web.log.read_text(errors='replace')[-3000:]}")
            done += len(latencies)
            wall += seconds
        return round(done / wall)

    with common.celery_worker(env, concurrency=2), common.gunicorn(env, workers, extra) as web:
        port = int(web.url.rsplit(":", 1)[1])
        callbacks.run_phase(port, "joining", warmup, args.concurrency)
        figures["without_per_second"] = run(port, runs["without"], web)
        started = time.perf_counter()
        try:
            streams = open_streams(port, keys, args.streams)
        except RuntimeError:
            print(web.log.read_text(errors="replace")[-3000:])
            raise
        figures["open_streams_seconds"] = round(time.perf_counter() - started, 2)
        figures["with_per_second"] = run(port, runs["with"], web)
        figures["streams_still_open"] = still_open(streams)
        for sock in streams:
            sock.close()
        time.sleep(1)
        figures["without_after_per_second"] = run(port, runs["without_after"], web)
    figures["load_after"] = os.getloadavg()
    baseline = (figures["without_per_second"] + figures["without_after_per_second"]) / 2
    figures["change_with_streams_percent"] = round((figures["with_per_second"] / baseline - 1) * 100, 1)
    common.print_table(f"streams: callbacks/s with and without {args.streams} held event streams", [
        ("callbacks/s without streams", figures["without_per_second"],
         f"(again after closing them: {figures['without_after_per_second']})"),
        (f"callbacks/s with {args.streams} streams", figures["with_per_second"],
         f"({figures['change_with_streams_percent']:+} % against the mean without; "
         f"{figures['streams_still_open']} of {args.streams} streams still open after the run)"),
        ("streams opened in", f"{figures['open_streams_seconds']} s", f"({args.users} users, {per_user} each)"),
        ("gunicorn", f"{workers} gevent workers",
         f"WEB_WORKER_CONNECTIONS {settings.WEB_WORKER_CONNECTIONS} + EVENT_STREAMS_PER_WORKER "
         f"{settings.EVENT_STREAMS_PER_WORKER} places each"),
        ("load average before / after", " ".join(f"{v:.2f}" for v in figures["load_before"]),
         " ".join(f"{v:.2f}" for v in figures["load_after"])),
        ("machine speed probe", f"Python loop {figures['speed_probe']['python_loop_2m_ms']} ms", ""),
    ])
    common.save("streams", figures)
    return figures


if __name__ == "__main__":
    main()
