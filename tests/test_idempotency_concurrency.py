"""Concurrent requests with one `Idempotency-Key` on real PostgreSQL: the key is claimed with an
insert on the unique (user, key), so exactly one request does the work; the others are told it
is running (409) or, once it has answered, get its answer. Real threads, each with its own database
connection, released together by a barrier."""
from __future__ import annotations

import threading

import pytest
from django.db import connections
from rest_framework.test import APIClient

from idempotency.models import IdempotencyRecord
from meetings.lifecycle.statuses import MeetingStatus
from meetings.models import Meeting, MeetingTransition
from tests.factories import make_meeting, make_session, make_token, make_user

pytestmark = pytest.mark.django_db(transaction=True)


def race(token: str, n: int, send) -> list:
    """`send(client)` from n threads at once; returns the responses."""
    barrier = threading.Barrier(n)
    responses, errors = [], []
    lock = threading.Lock()

    def run() -> None:
        try:
            client = APIClient()
            client.credentials(HTTP_X_API_KEY=token)
            barrier.wait(timeout=10)
            response = send(client)
            with lock:
                responses.append(response)
        except BaseException as exc:  # surfaced by the assertion below
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=run) for _ in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    assert len(responses) == n
    return responses


def outcome(response) -> str:
    if response.status_code == 201 and response.get("Idempotent-Replayed") != "true":
        return "done"
    if response.status_code == 201:
        return "replayed"
    if response.status_code == 409 and "Idempotency-Key" in response.json()["detail"]:
        return "running"
    return f"{response.status_code} {response.content[:200]!r}"


@pytest.mark.parametrize("n", [2, 8])
def test_concurrent_post_bots_with_one_key_create_exactly_one_bot(n):
    for round_ in range(5):
        user = make_user(max_concurrent_bots=0)
        body = {"platform": "zoom", "native_meeting_id": f"55512340{round_}"}

        responses = race(make_token(user), n, lambda c: c.post("/bots", body, format="json",
                                                                 HTTP_IDEMPOTENCY_KEY="one-key"))

        outcomes = [outcome(r) for r in responses]
        assert outcomes.count("done") == 1, outcomes
        assert set(outcomes) <= {"done", "replayed", "running"}, outcomes
        [meeting] = Meeting.objects.filter(user=user)
        assert {r.json()["id"] for r in responses if r.status_code == 201} == {meeting.id}
        assert IdempotencyRecord.objects.get(user=user, key="one-key").state == "done"


def test_concurrent_stops_with_one_key_stop_once():
    user = make_user()
    meeting = make_meeting(user, status=MeetingStatus.ACTIVE, native_meeting_id="abc-defg-hij")
    make_session(meeting)

    responses = race(make_token(user), 4, lambda c: c.delete("/bots/google_meet/abc-defg-hij",
                                                              HTTP_IDEMPOTENCY_KEY="stop"))

    statuses = sorted(r.status_code for r in responses)
    assert set(statuses) <= {202, 409} and statuses.count(202) >= 1, statuses
    assert {r.json()["message"] for r in responses if r.status_code == 202} == {
        "Stop request accepted and is being processed."}
    assert MeetingTransition.objects.filter(meeting=meeting, to_status=MeetingStatus.STOPPING).count() == 1


def test_concurrent_requests_with_one_key_and_different_bodies_create_one_bot():
    user = make_user(max_concurrent_bots=0)
    ids = iter(f"5551234{n:03d}" for n in range(8))
    lock = threading.Lock()

    def send(client):
        with lock:
            native_id = next(ids)
        return client.post("/bots", {"platform": "zoom", "native_meeting_id": native_id}, format="json",
                           HTTP_IDEMPOTENCY_KEY="contested")

    responses = race(make_token(user), 8, send)

    statuses = sorted(r.status_code for r in responses)
    assert statuses.count(201) == 1 and set(statuses) <= {201, 409, 422}, statuses
    assert Meeting.objects.filter(user=user).count() == 1
