"""DELETE /bots → terminal status, through the whole system: gunicorn, a Celery worker, the process
backend and the simulated bot (simbot), on real PostgreSQL and Redis.

- cooperative bots: the bot receives `leave` on Redis and reports `exited`; p50/p99 of
  DELETE → completed over --bots bots (launched --batch at a time, each stopped once active).
- bots that ignore leave (simbot fault `ignore_leave`, SIGTERM ignored too): the delayed stop
  kills them and the grace finalizer completes the meeting. Run with short knobs
  (BOT_STOP_DELAY_SECONDS=3, BOT_STOP_GRACE_SECONDS=2) and two BOT_STOP_TIMEOUT_SECONDS values,
  because the forced stop waits that long for the SIGTERM it sends before it SIGKILLs.

The time is measured in the database: end_time − stop_requested_at (the DELETE's transaction).

    python -m bench.stop [--bots 20] [--batch 5] [--ignoring 3]
"""
from __future__ import annotations

import argparse
import time
from concurrent.futures import ThreadPoolExecutor

import requests

from bench import common

DELAY, GRACE = 3.0, 2.0


def _api(env: dict):
    from accounts.services import issue_token

    user = common.make_user("stop-bench@example.com")
    session = requests.Session()
    session.headers["X-API-Key"] = issue_token(user).token
    return session


def _wait(session, url: str, meeting_id: int, wanted: set[str], timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while True:
        status = session.get(f"{url}/meetings/{meeting_id}", timeout=10).json()["status"]
        if status in wanted or time.monotonic() > deadline:
            return status
        time.sleep(0.05)


def stop_one(session, url: str, native_id: str, bot_name: str, timeout: float) -> float | None:
    from meetings.models import Meeting

    created = session.post(f"{url}/bots", json={"platform": "google_meet", "native_meeting_id": native_id,
                                                 "bot_name": bot_name}, timeout=10)
    if created.status_code != 201:
        print("  POST /bots:", created.status_code, created.text[:200])
        return None
    meeting_id = created.json()["id"]
    if _wait(session, url, meeting_id, {"active"}, 60) != "active":
        print(f"  meeting {meeting_id} never became active")
        return None
    assert session.delete(f"{url}/bots/google_meet/{native_id}", timeout=10).status_code == 202
    status = _wait(session, url, meeting_id, {"completed", "failed"}, timeout)
    meeting = Meeting.objects.get(pk=meeting_id)
    if status not in ("completed", "failed") or meeting.end_time is None:
        print(f"  meeting {meeting_id} is still {status}")
        return None
    return (meeting.end_time - meeting.stop_requested_at).total_seconds()


def run(env: dict, count: int, batch: int, bot_name: str, series: int, timeout: float,
        extra_env: dict) -> list[float]:
    knobs = {"ORCHESTRATOR": "process", "BOT_STOP_DELAY_SECONDS": str(DELAY), "BOT_STOP_GRACE_SECONDS": str(GRACE),
             "SIMBOT_STEP_SECONDS": "0.05", **extra_env}
    results: list[float] = []
    with common.gunicorn(env, 2, extra_env=knobs) as web, \
            common.celery_worker(env, concurrency=4, extra_env={**knobs, "PUBLIC_BASE_URL": web.url}, pool="threads"):
        session = _api(env)
        with ThreadPoolExecutor(batch) as pool:
            futures = [pool.submit(stop_one, session, web.url, common.meet_id(i, series), bot_name, timeout)
                       for i in range(count)]
            for future in futures:
                value = future.result()
                if value is not None:
                    results.append(value)
    return results


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bots", type=int, default=20)
    parser.add_argument("--batch", type=int, default=5)
    parser.add_argument("--ignoring", type=int, default=3)
    args = parser.parse_args(argv)
    env = common.setup()

    cooperative = run(env, args.bots, args.batch, "Bench bot", 1, 30, {})
    figures = {"cooperative": {"bots": len(cooperative),
                               "p50_ms": round(common.percentile(cooperative, 50) * 1000, 1) if cooperative else None,
                               "p99_ms": round(common.percentile(cooperative, 99) * 1000, 1) if cooperative else None,
                               "max_ms": round(max(cooperative) * 1000, 1) if cooperative else None}}
    rows = [("cooperative bots (leave honoured)", f"{len(cooperative)} bots",
             f"p50 {figures['cooperative']['p50_ms']} ms", f"p99 {figures['cooperative']['p99_ms']} ms")]
    for stop_timeout in (10.0, 1.0):
        ignoring = run(env, args.ignoring, args.ignoring, "simbot:ignore_leave", 2 + int(stop_timeout),
                       DELAY + GRACE + stop_timeout + 30, {"BOT_STOP_TIMEOUT_SECONDS": str(stop_timeout)})
        key = f"ignore_leave_stop_timeout_{stop_timeout:g}s"
        figures[key] = {"bots": len(ignoring), "delay": DELAY, "grace": GRACE, "stop_timeout": stop_timeout,
                        "seconds": [round(v, 2) for v in ignoring],
                        "delay_plus_grace": DELAY + GRACE,
                        "max_deviation_from_delay_plus_grace": round(max(abs(v - DELAY - GRACE) for v in ignoring), 2)
                        if ignoring else None}
        rows.append((f"ignores leave, stop timeout {stop_timeout:g} s", f"{len(ignoring)} bots",
                     f"{', '.join(f'{v:.2f}' for v in ignoring)} s",
                     f"(delay + grace = {DELAY + GRACE:g} s)"))
    common.print_table("stop: DELETE /bots -> terminal (end_time - stop_requested_at)", rows)
    common.save("stop", figures)
    return figures


if __name__ == "__main__":
    main()
