"""Per-user request rate limits (common/ratelimit.py): a token bucket per user in Redis, shared
by every web worker and host. A burst from one user is refused with 429, `Retry-After` and a JSON
`detail`; other users, the user's bots and the operator are served meanwhile."""
from __future__ import annotations

import logging
import re
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from rest_framework.test import APIClient

from common import ratelimit
from tests.factories import make_meeting, make_session, make_token, make_user
from tests.http import answer

pytestmark = pytest.mark.django_db

MEET = {"platform": "google_meet", "native_meeting_id": "abc-defg-hij"}


def client_for(user) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_X_API_KEY=make_token(user))
    return client


@pytest.fixture
def tight(settings):
    """A bucket of 5 that refills one token every 100 s: a test's burst cannot be refilled."""
    settings.API_RATE_LIMIT_BURST = 5
    settings.API_RATE_LIMIT_PER_SECOND = 0.01
    return settings


def assert_limited(response) -> dict:
    body = answer(response, 429)
    retry_after = response["Retry-After"]
    assert retry_after.isdigit() and int(retry_after) >= 1, retry_after
    assert body["detail"].startswith("Too many requests: at most ")
    return body


def test_a_burst_from_one_user_is_refused_with_429_while_another_users_requests_are_served(tight):
    noisy, quiet = client_for(make_user()), client_for(make_user())

    noisy_statuses, quiet_statuses = [], []
    for n in range(12):
        noisy_statuses.append(noisy.get("/meetings").status_code)
        if n % 3 == 2:  # 4 requests in all: within the quiet user's own bucket
            quiet_statuses.append(quiet.get("/meetings").status_code)

    assert noisy_statuses == [200] * 5 + [429] * 7
    assert quiet_statuses == [200] * 4


def test_a_refused_request_says_when_to_retry_and_which_limit_refused_it(tight):
    client = client_for(make_user())
    for _ in range(5):
        answer(client.get("/meetings"), 200)

    response = client.get("/meetings")
    body = assert_limited(response)

    assert "0.6 API requests a minute per user, in bursts of up to 5" in body["detail"]
    # One token takes 100 s to refill; a little of it may have refilled meanwhile.
    wait = int(re.fullmatch(r".*Expected available in (\d+) seconds\.", body["detail"]).group(1))
    assert 90 <= wait <= 100
    assert int(response["Retry-After"]) == wait


def test_every_user_api_endpoint_takes_from_the_same_bucket(tight):
    client = client_for(make_user())
    for path in ("/meetings", "/bots/status", "/events", "/user/webhook", "/meetings/1"):
        client.get(path)

    assert_limited(client.get("/meetings"))
    assert_limited(client.delete("/bots/google_meet/abc-defg-hij"))
    assert_limited(client.post("/bots", MEET, format="json"))


def test_post_bots_also_takes_from_a_tighter_bucket_of_its_own(settings):
    settings.BOT_REQUEST_RATE_LIMIT_BURST = 2
    settings.BOT_REQUEST_RATE_LIMIT_PER_MINUTE = 0.6
    client = client_for(make_user())
    answer(client.post("/bots", MEET, format="json"), 201)
    answer(client.post("/bots", {**MEET, "native_meeting_id": "abc-defg-hik"}, format="json"), 201)

    body = assert_limited(client.post("/bots", {**MEET, "native_meeting_id": "abc-defg-hil"}, format="json"))

    assert "bot requests (POST /bots)" in body["detail"]
    answer(client.get("/meetings"), 200)  # the general bucket still has tokens


def test_a_bot_request_refused_by_the_general_bucket_takes_no_bot_token(tight, redis_conn):
    user = make_user()
    client = client_for(user)
    for _ in range(5):
        client.get("/meetings")

    assert_limited(client.post("/bots", MEET, format="json"))

    # A bucket never written is full: the refused request took nothing from it.
    assert not redis_conn.exists(ratelimit.key(user.pk, ratelimit.bot_request_bucket()))


def test_a_bot_callback_during_its_users_burst_is_answered(tight):
    user = make_user()
    session = make_session(make_meeting(user))
    client = client_for(user)
    for _ in range(5):
        client.get("/meetings")
    assert_limited(client.get("/meetings"))

    response = APIClient().post("/bots/internal/callback/joining", {"connection_id": str(session.session_uid)},
                                format="json")

    assert answer(response, 200)["meeting_status"] == "joining"


def test_the_admin_api_is_the_operator_and_not_rate_limited(tight, settings):
    admin = APIClient()
    admin.credentials(HTTP_X_ADMIN_API_KEY=settings.ADMIN_API_TOKEN)

    assert [admin.get("/admin/users?limit=1").status_code for _ in range(8)] == [200] * 8


def test_a_zero_rate_turns_the_limit_off(settings):
    settings.API_RATE_LIMIT_PER_SECOND = 0
    settings.API_RATE_LIMIT_BURST = 1
    client = client_for(make_user())

    assert [client.get("/meetings").status_code for _ in range(4)] == [200] * 4


def test_with_redis_unreachable_requests_are_served_unlimited_and_a_warning_logged(tight, caplog, monkeypatch):
    # Fail open (the module docstring says why): a port nothing listens on.
    tight.REDIS_URL = "redis://127.0.0.1:1/0"
    monkeypatch.setattr(ratelimit, "_last_warning", 0.0)
    client = client_for(make_user())

    with caplog.at_level(logging.WARNING, logger="common.ratelimit"):
        statuses = [client.get("/meetings").status_code for _ in range(8)]

    assert statuses == [200] * 8
    assert [r.getMessage() for r in caplog.records if r.name == "common.ratelimit"] == [
        "rate limits not applied: Redis unavailable (ConnectionError); requests are served unlimited until it "
        "answers again"]


def _commandstats(redis_conn) -> dict[str, int]:
    return {name: stats["calls"] for name, stats in redis_conn.info("commandstats").items()}


def test_each_request_costs_one_redis_round_trip_of_the_cached_script(redis_conn):
    client = client_for(make_user())
    client.get("/meetings")  # the script is loaded by now
    before = _commandstats(redis_conn)

    for _ in range(10):
        answer(client.get("/meetings"), 200)

    after = _commandstats(redis_conn)
    assert after.get("cmdstat_evalsha", 0) - before.get("cmdstat_evalsha", 0) == 10
    assert after.get("cmdstat_eval", 0) == before.get("cmdstat_eval", 0)


def test_a_bot_callback_costs_the_limiter_nothing(redis_conn):
    """Callbacks/s cannot drop by the limiter: a callback never asks it (no script call)."""
    session = make_session(make_meeting(make_user()))
    client_for(make_user()).get("/meetings")  # the script is loaded by now
    before = _commandstats(redis_conn)

    answer(APIClient().post("/bots/internal/callback/joining", {"connection_id": str(session.session_uid)},
                            format="json"), 200)

    after = _commandstats(redis_conn)
    assert after.get("cmdstat_evalsha", 0) == before.get("cmdstat_evalsha", 0)
    assert after.get("cmdstat_eval", 0) == before.get("cmdstat_eval", 0)


def test_after_a_script_flush_the_script_is_loaded_again_and_the_bucket_kept(tight, redis_conn):
    client = client_for(make_user())
    for _ in range(5):
        answer(client.get("/meetings"), 200)
    redis_conn.script_flush()

    assert_limited(client.get("/meetings"))


# --- Shared by every process ------------------------------------------------------------------------
@pytest.mark.django_db(transaction=True)
def test_the_bucket_is_shared_by_two_web_servers(tmp_path):
    """Two gunicorns (two hosts, as far as the limit can tell), one user: the burst is the user's,
    whichever server answers."""
    from tests.observability.test_gunicorn import Gunicorn

    key = make_token(make_user())
    limits = {"API_RATE_LIMIT_BURST": "6", "API_RATE_LIMIT_PER_SECOND": "0.01", "LOG_LEVEL": "WARNING"}
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = Gunicorn(tmp_path / "a", workers=1, **limits)
    try:
        second = Gunicorn(tmp_path / "b", workers=1, **limits)
        try:
            def get(server):
                return requests.get(server.url + "/meetings", headers={"X-API-Key": key, "Connection": "close"},
                                    timeout=30)

            with ThreadPoolExecutor(4) as pool:
                served = list(pool.map(get, [first, second] * 3))
            assert [r.status_code for r in served] == [200] * 6

            refused = [get(first), get(second)]
            assert [r.status_code for r in refused] == [429, 429]
            assert all(int(r.headers["Retry-After"]) >= 1 and r.json()["detail"] for r in refused)
        finally:
            second.stop()
    finally:
        first.stop()
