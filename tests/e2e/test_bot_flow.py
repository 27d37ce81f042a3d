"""The whole path through HTTP, Celery, the process backend, the simulated bot and Redis."""
from __future__ import annotations

import json

import pytest

from common.redis_client import get_redis
from tests.waiting import wait_for

pytestmark = pytest.mark.django_db(transaction=True)


def received(meeting_id: int) -> list[dict]:
    return [json.loads(x) for x in get_redis().lrange(f"simbot:received:{meeting_id}", 0, -1)]


def wait_received(meeting_id: int, action: str, timeout: float = 10) -> dict:
    return wait_for(lambda: next((c for c in received(meeting_id) if c.get("action") == action), None),
                    timeout=timeout, what=f"the bot of meeting {meeting_id} to receive {action}")


def test_request_reconfigure_and_stop_a_cooperative_bot(stack):
    created = stack.call("POST", "/bots", json={"platform": "google_meet", "native_meeting_id": "abc-defg-hij",
                                                "bot_name": "E2E", "language": "en"})
    assert created.status_code == 201, created.text
    meeting_id = created.json()["id"]

    active = stack.wait_status(meeting_id, "active")
    assert active["bot_container_id"]

    reconfigured = stack.call("PUT", "/bots/google_meet/abc-defg-hij/config", json={"language": "de"})
    assert reconfigured.status_code == 202
    command = wait_received(meeting_id, "reconfigure")
    assert command["language"] == "de"

    stopped = stack.call("DELETE", "/bots/google_meet/abc-defg-hij")
    assert stopped.status_code == 202
    final = stack.wait_status(meeting_id, {"completed", "failed"}, timeout=20)

    assert final["status"] == "completed"
    assert final["data"]["completion_reason"] == "stopped"
    applied = [(t["from"], t["to"], t["source"]) for t in final["transitions"] if t["applied"]]
    assert applied == [
        (None, "requested", "user"),
        ("requested", "joining", "bot_callback"),
        ("joining", "awaiting_admission", "bot_callback"),
        ("awaiting_admission", "active", "bot_callback"),
        ("active", "stopping", "user"),
        ("stopping", "completed", "bot_callback"),
    ]


def test_bot_that_ignores_leave_is_stopped_and_finalized_by_the_grace_finalizer(stack):
    created = stack.call("POST", "/bots", json={"platform": "teams", "native_meeting_id": "1234567890",
                                                "bot_name": "simbot:ignore_leave"})
    meeting_id = created.json()["id"]
    stack.wait_status(meeting_id, "active")

    stack.call("DELETE", "/bots/teams/1234567890")
    final = stack.wait_status(meeting_id, {"completed", "failed"}, timeout=30)

    assert (final["status"], final["data"]["completion_reason"]) == ("completed", "stopped")
    last = [t for t in final["transitions"] if t["applied"]][-1]
    assert last["source"] == "grace_finalizer"
