"""A broker or database restart in the middle of stops costs at most a sweep interval, never the
service: under `make run` (devstack/run.py, its own embedded servers), bots that cooperate,
ignore leave and SIGTERM, or exit silently are all stopped; 0.5 s later the embedded Redis (or
PostgreSQL) is SIGKILLed and started again by the supervisor. Every meeting still ends within
delay + grace + two sweep intervals + the restart time, each ends once, and a bot requested
afterwards becomes active."""
from __future__ import annotations

import os
import signal
import time

import pytest
import requests

from tests.waiting import wait_for
from tests.test_runstack import runstack  # noqa: F401  (the fixture)

pytestmark = pytest.mark.django_db(transaction=True)

DELAY, GRACE, SWEEP = 2.0, 2.0, 2.0
KNOBS = {"BOT_STOP_DELAY_SECONDS": str(DELAY), "BOT_STOP_GRACE_SECONDS": str(GRACE), "BOT_STOP_TIMEOUT_SECONDS": "2",
         "ORPHAN_SWEEP_INTERVAL_SECONDS": str(SWEEP), "ORPHAN_GRACE_SECONDS": "3", "SIMBOT_STEP_SECONDS": "0.1",
         "DEFAULT_MAX_CONCURRENT_BOTS": "0"}
# Five: the demo user's limit.
BEHAVIOURS = ["simbot", "simbot:ignore_leave", "simbot:no_exit_callback", "simbot:ignore_leave", "simbot:no_exit_callback"]
MARGIN = 10.0  # process start-up and a restarted worker reconnecting, on a busy 2-core machine


def _meet_id(n: int) -> str:
    return f"abc-defg-{chr(ord('a') + n // 26)}{chr(ord('a') + n % 26)}x"[:12]


@pytest.mark.parametrize("server", ["redis", "postgres"])
def test_stops_in_flight_survive_a_server_restart(runstack, server):  # noqa: F811
    stack = runstack(embedded_postgres=(server == "postgres"), **KNOBS)
    stack.start()
    base = f"http://127.0.0.1:{stack.port}"
    api = requests.Session()
    api.headers["X-API-Key"] = stack.demo_key()
    ids = {}
    for n, name in enumerate(BEHAVIOURS):
        response = api.post(f"{base}/bots", json={"platform": "google_meet", "native_meeting_id": _meet_id(n),
                                                  "bot_name": name}, timeout=10)
        assert response.status_code == 201, response.text
        ids[_meet_id(n)] = response.json()["id"]
    for meeting_id in ids.values():
        wait_for(lambda: api.get(f"{base}/meetings/{meeting_id}", timeout=5).json()["status"] == "active",
                 timeout=60, interval=0.2, what=f"meeting {meeting_id} to be active\n{stack.tail()}")

    for native in ids:
        assert api.delete(f"{base}/bots/google_meet/{native}", timeout=10).status_code == 202
    stopped_at = time.monotonic()
    time.sleep(0.5)
    os.kill(stack.redis_pid() if server == "redis" else stack.postgres_pid(), signal.SIGKILL)

    def statuses() -> dict[int, str] | None:
        try:
            return {m["id"]: m["status"] for m in api.get(f"{base}/meetings", timeout=5).json()["meetings"]
                    if m["id"] in ids.values()}
        except (requests.RequestException, ValueError, KeyError):
            return None  # the database is still down

    ended = wait_for(lambda: (s := statuses()) and all(v in ("completed", "failed") for v in s.values()) and s,
                     timeout=DELAY + GRACE + 2 * SWEEP + 60, interval=0.3,
                     what=f"every stopped meeting to end\n{stack.tail()}")
    took = time.monotonic() - stopped_at
    print(f"\n{server} SIGKILLed 0.5 s after the stops: every meeting ended {took:.1f} s after them "
          f"(bound {DELAY + GRACE + 2 * SWEEP:.0f} s + restart)")
    assert set(ended) == set(ids.values())
    assert took <= DELAY + GRACE + 2 * SWEEP + MARGIN, took
    assert stack.proc.poll() is None, "make run itself must keep running"
    for meeting_id in ids.values():
        meeting = api.get(f"{base}/meetings/{meeting_id}", timeout=5).json()
        applied_endings = [t for t in meeting["transitions"] if t["applied"] and t["to"] in ("completed", "failed")]
        assert len(applied_endings) == 1, meeting  # ended once

    response = api.post(f"{base}/bots", json={"platform": "google_meet", "native_meeting_id": "xyz-wxyz-xyz"},
                        timeout=10)
    assert response.status_code == 201, response.text
    wait_for(lambda: api.get(f"{base}/meetings/{response.json()['id']}", timeout=5).json()["status"] == "active",
             timeout=60, interval=0.3, what=f"a bot requested after the restart to be active\n{stack.tail()}")
