"""Concurrent `POST /bots` on real PostgreSQL (protocol.md: the duplicate check and the concurrent
bot limit are race-safe). Real threads, each with its own database connection, released together
by a barrier. After commit, each created meeting enqueues `launch_bot` on the test broker (Redis
db 9, no worker): harmless here."""
from __future__ import annotations

import threading

import pytest
from django.db import connections
from rest_framework.test import APIClient

from meetings.models import Meeting
from tests.factories import make_token, make_user

pytestmark = pytest.mark.django_db(transaction=True)


def race(token: str, bodies: list[dict]) -> list[tuple[int, dict]]:
    """POST every body with this token at once (one thread each); returns (status, json) per request."""
    return [(status, body) for _, status, body in race_many([(token, body) for body in bodies])]


def race_many(requests: list[tuple[str, dict]]) -> list[tuple[str, int, dict]]:
    """POST every (token, body) at once; returns (token, status, json) per request."""
    barrier = threading.Barrier(len(requests))
    results: list[tuple[str, int, dict]] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def post(token: str, body: dict) -> None:
        try:
            client = APIClient()
            client.credentials(HTTP_X_API_KEY=token)
            barrier.wait(timeout=10)
            response = client.post("/bots", body, format="json")
            assert response["Content-Type"].startswith("application/json"), response.content
            with lock:
                results.append((token, response.status_code, response.json()))
        except BaseException as exc:  # surfaced by the assertion below
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=post, args=request) for request in requests]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    assert len(results) == len(requests)
    assert all(status != 500 for _, status, _ in results), results
    return results


@pytest.mark.parametrize("limit", [0, 1, 5])
def test_two_concurrent_requests_for_the_same_meeting_give_one_201_and_one_409(limit):
    for round_ in range(5):
        user = make_user(max_concurrent_bots=limit)
        native_id = f"12345678{round_}"
        body = {"platform": "zoom", "native_meeting_id": native_id}

        results = race(make_token(user), [body, body])

        assert sorted(status for status, _ in results) == [201, 409], results
        assert Meeting.objects.filter(user=user, native_meeting_id=native_id).count() == 1
        [created] = [b for status, b in results if status == 201]
        assert Meeting.objects.get(user=user).id == created["id"]


def test_eight_concurrent_requests_at_a_limit_of_three_create_exactly_three_meetings():
    for _ in range(3):
        user = make_user(max_concurrent_bots=3)
        bodies = [{"platform": "zoom", "native_meeting_id": f"98765432{n}"} for n in range(8)]

        results = race(make_token(user), bodies)

        statuses = sorted(status for status, _ in results)
        assert statuses == [201] * 3 + [403] * 5, results
        for status, body in results:
            if status == 403:
                assert body == {"detail": "User has reached the maximum concurrent bot limit (3)."}
        created = {body["id"] for status, body in results if status == 201}
        assert set(Meeting.objects.filter(user=user).values_list("id", flat=True)) == created


def test_concurrent_requests_of_two_users_do_not_share_a_limit():
    users = [make_user(max_concurrent_bots=2), make_user(max_concurrent_bots=2)]
    tokens = {make_token(user): user for user in users}
    bodies = [{"platform": "teams", "native_meeting_id": f"123456789{n}"} for n in range(4)]

    results = race_many([(token, body) for token in tokens for body in bodies])

    for token, user in tokens.items():
        assert sorted(status for t, status, _ in results if t == token) == [201, 201, 403, 403]
        assert Meeting.objects.filter(user=user).count() == 2
