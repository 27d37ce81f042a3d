"""Concurrent requests with one `Idempotency-Key` on real PostgreSQL: the key is claimed with an
insert on the unique (user, key), so exactly one request does the work; the others are told it
is running (409) or, once it has answered, get its answer. Real threads, each with its own database
connection, released together by a barrier. And a request whose gunicorn worker is killed while it
holds its key: the key is held until its lease runs out, then the retry does the work once."""
from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

import psycopg2
import requests

import pytest
from django.db import connection, connections
from rest_framework.test import APIClient

from idempotency.models import IdempotencyRecord
from meetings.lifecycle.statuses import MeetingStatus
from meetings.models import Meeting, MeetingTransition
from tests.factories import make_meeting, make_session, make_token, make_user
from tests.observability.test_gunicorn import Gunicorn, _database_url
from tests.support import UNREACHED_RATE_LIMITS
from tests.waiting import wait_for

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


def _children(pid: int) -> list[int]:
    return [int(entry.name) for entry in Path("/proc").iterdir() if entry.name.isdigit()
            and _parent(entry) == pid]


def _parent(proc_dir: Path) -> int | None:
    try:
        return int((proc_dir / "stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def _waiting_on_a_lock() -> bool:
    with connection.cursor() as cursor:
        # Not '%FOR UPDATE': pg_stat_activity keeps the first track_activity_query_size (1 kB) of a
        # query, and the meeting's SELECT of every column is longer than that.
        cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                       "AND query LIKE 'SELECT %%meetings_meeting%%' AND pid <> pg_backend_pid()")
        return cursor.fetchone()[0] > 0


def test_a_request_killed_while_holding_its_key_frees_it_after_the_lease_and_the_retry_works_once(tmp_path):
    user = make_user()
    meeting = make_meeting(user, status=MeetingStatus.ACTIVE, native_meeting_id="abc-defg-hij",
                           data={"language": "en"})
    make_session(meeting)
    web = Gunicorn(tmp_path, workers=1, IDEMPOTENCY_LEASE_SECONDS="8", **UNREACHED_RATE_LIMITS)
    url = f"{web.url}/bots/google_meet/abc-defg-hij/config"
    headers = {"X-API-Key": make_token(user), "Idempotency-Key": "killed"}
    locker = psycopg2.connect(_database_url())
    try:
        # The request stops inside its work: the meeting row it locks is held here.
        with locker.cursor() as cursor:
            cursor.execute("SELECT id FROM meetings_meeting WHERE id = %s FOR UPDATE", [meeting.id])
        first = threading.Thread(target=_put_ignoring_errors, args=(url, headers))
        first.start()
        wait_for(_waiting_on_a_lock, what="the request waiting for the meeting's row lock")
        assert IdempotencyRecord.objects.get(user=user, key="killed").state == "running"

        for worker in _children(web.proc.pid):
            os.kill(worker, signal.SIGKILL)
        first.join(timeout=30)
        locker.rollback()

        seen = []

        def retried():
            response = requests.put(url, json={"language": "de"}, headers=headers, timeout=30)
            seen.append(response.status_code)
            return response.status_code != 409 and response

        response = wait_for(retried, timeout=30, interval=0.2, what="the key freed by its lease")
    finally:
        locker.close()
        web.stop()

    assert response.status_code == 202, response.text
    assert seen[0] == 409 and set(seen[:-1]) == {409}, seen  # held by the killed request until its lease ran out
    assert response.headers.get("Idempotent-Replayed") is None
    meeting.refresh_from_db()
    assert meeting.data["language"] == "de"
    record = IdempotencyRecord.objects.get(user=user, key="killed")
    assert (record.state, record.response_status) == ("done", 202)


def _put_ignoring_errors(url: str, headers: dict) -> None:
    try:
        requests.put(url, json={"language": "de"}, headers=headers, timeout=30)
    except requests.RequestException:
        pass  # its worker was killed: the connection ends without an answer
