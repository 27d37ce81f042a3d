"""Replay throughput: `POST /user/webhook/redeliver` of a whole event-log range (2,000 events by
default) to a local receiver that answers 200 at once, through a real webhooks Celery worker
(threads, CELERY_WEBHOOK_CONCURRENCY) under the per-user cap (WEBHOOK_MAX_IN_FLIGHT_PER_USER).

The events are made first with no webhook set (so none has a delivery), then the webhook is set.
Each run replays the whole log: the first run creates the deliveries (`created`), later ones
requeue the same rows. Figures per run: the request's own time (choosing and queueing the rows),
the time until every delivery is delivered, events/s, and what the receiver got (each event id
exactly once per run, or the duplicates).

    python -m bench.replay [--events 2000] [--caps 4,16]
"""
from __future__ import annotations

import argparse
import os
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from bench import common

PER_MEETING = ("joining", "active", "stopping", "completed")  # with `requested`: 5 events a meeting


class FastReceiver:
    """Answers every POST with 200 at once and counts the X-Webhook-Id values it got."""

    def __init__(self):
        self.ids: Counter = Counter()
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with receiver.lock:
                    receiver.ids[self.headers.get("X-Webhook-Id")] += 1
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.request_queue_size = 256
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def reset(self) -> None:
        with self.lock:
            self.ids.clear()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def make_events(user, count: int) -> int:
    """`count` (rounded up to whole meetings) applied transitions of `user`, through the lifecycle."""
    from meetings.lifecycle import transitions as lifecycle
    from meetings.lifecycle.statuses import TransitionSource

    meetings = -(-count // (len(PER_MEETING) + 1))
    for n in range(meetings):
        meeting = lifecycle.create_meeting(user=user, platform="google_meet", native_meeting_id=f"rep-{n:05d}-x",
                                           data={}, source=TransitionSource.USER)
        for status in PER_MEETING:
            lifecycle.transition(meeting.id, status, source=TransitionSource.BOT_CALLBACK, completion_reason="stopped")
    return meetings * (len(PER_MEETING) + 1)


def webhooks_worker(env: dict, cap: int):
    from botmanager import workers

    kind = next(k for k in workers.kinds() if k.name == "webhooks")
    return kind, {**env, "LOG_LEVEL": os.environ.get("REPLAY_LOGLEVEL", "WARNING"), "WEBHOOK_ALLOW_PRIVATE_ADDRESSES": "true", "WEBHOOK_MAX_IN_FLIGHT_PER_USER": str(cap)}


def one_run(env: dict, client, user, receiver: FastReceiver, events: int, cap: int) -> dict:
    import os
    import socket
    import sys
    from pathlib import Path

    from botmanager.celery import app
    from django.utils import timezone

    from webhooks.models import WebhookAttempt, WebhookDelivery

    kind, worker_env = webhooks_worker(env, cap)
    suffix = f"bench{os.getpid()}-cap{cap}"
    service = common.Service(kind.argv(str(Path(sys.executable).parent), loglevel=os.environ.get("REPLAY_LOGLEVEL", "WARNING"), hostname_suffix=suffix,
                                       extra=("--without-gossip", "--without-mingle")),
                             worker_env, Path(env["RUN_DIR"]) / f"celery-replay-{cap}.log")
    try:
        name = f"webhooks@{suffix}"
        deadline = time.monotonic() + 60
        while not app.control.ping(destination=[name], timeout=1):
            if service.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the webhooks worker did not start on {socket.gethostname()}:\n"
                                   f"{service.log.read_text()[-2000:]}")
        receiver.reset()
        since = timezone.now()
        started = time.perf_counter()
        response = client.post("/user/webhook/redeliver", {"after": ""}, content_type="application/json")
        requested = time.perf_counter()
        assert response.status_code == 202, response.content
        answer = response.json()
        queued = WebhookDelivery.objects.filter(pk__in=answer["ids"])
        while queued.filter(status="succeeded").count() < answer["queued"]:
            if time.perf_counter() - started > 600:
                raise RuntimeError("the replay did not finish within 10 minutes")
            time.sleep(0.05)
        done = time.perf_counter()
    finally:
        service.stop()
    log = service.log.read_text(errors="replace")
    if os.environ.get("REPLAY_LOGLEVEL"):
        print(Counter(line.rsplit(":", 1)[-1].strip() for line in log.splitlines() if "succeeded in" in line))
        took = [float(line.split("succeeded in ")[1].split("s:")[0]) for line in log.splitlines()
                if "succeeded in" in line and line.endswith("'succeeded'")]
        print(f"attempt tasks: mean {sum(took) / len(took) * 1000:.1f} ms, p50 {common.percentile(took, 50) * 1000:.1f} ms")
    errors = [line for line in log.splitlines() if "ERROR" in line or "Traceback" in line]
    if errors:
        print(f"worker log ({len(errors)} error lines):\n" + log[-3000:])
    got = dict(receiver.ids)
    durations = list(WebhookAttempt.objects.filter(delivery_id__in=answer["ids"], started_at__gte=since)
                     .values_list("duration_ms", flat=True))
    return {"attempt_ms_p50": common.percentile(durations, 50), "attempt_ms_p99": common.percentile(durations, 99),
            "cap": cap, "worker_threads": kind.concurrency, "events": events, "queued": answer["queued"],
            "created": answer["created"], "request_ms": round((requested - started) * 1000),
            "seconds": round(done - started, 2), "events_per_second": round(answer["queued"] / (done - started)),
            "received_ids": len(got), "duplicates": sum(n - 1 for n in got.values())}


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--caps", default="4,16", help="WEBHOOK_MAX_IN_FLIGHT_PER_USER of each run")
    args = parser.parse_args(argv)
    env = common.setup()
    from django.conf import settings
    from django.test import Client

    from accounts import webhook
    from accounts.services import issue_token

    settings.WEBHOOK_ALLOW_PRIVATE_ADDRESSES = True
    settings.WEBHOOK_REDELIVER_MAX = max(settings.WEBHOOK_REDELIVER_MAX, args.events + 10)
    receiver = FastReceiver()
    user = common.make_user("replay@example.com")
    started = time.perf_counter()
    events = make_events(user, args.events)
    print(f"made {events} events in {time.perf_counter() - started:.1f} s (no webhook set: no deliveries)")
    # Their post-meeting tasks wait in the broker: run later, after the webhook is set, they would
    # add final events to the first run.
    from botmanager.celery import app

    app.control.purge()
    webhook.set_webhook(user, receiver.url)
    client = Client(HTTP_X_API_KEY=issue_token(user).token)
    runs = [one_run(env, client, user, receiver, events, int(cap)) for cap in args.caps.split(",")]
    receiver.stop()
    common.print_table("replay: POST /user/webhook/redeliver of the whole log, until every delivery is delivered", [
        ("cap", "threads", "queued", "created", "request ms", "seconds", "events/s", "ids received", "duplicates",
         "HTTP ms p50/p99"),
        *[(r["cap"], r["worker_threads"], r["queued"], r["created"], r["request_ms"], r["seconds"],
           r["events_per_second"], r["received_ids"], r["duplicates"], f"{r['attempt_ms_p50']}/{r['attempt_ms_p99']}")
          for r in runs]])
    common.save("replay", {"runs": runs, "speed_probe": common.speed_probe()})
    return runs


if __name__ == "__main__":
    main()
