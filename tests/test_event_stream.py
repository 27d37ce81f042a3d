"""`GET /events/stream` (meetings/events/stream.py), run in this process: Server-Sent Events, the
log replayed from `Last-Event-ID` / `?after=`, live events from Redis after the replay with none
lost or doubled at the hand-over, heartbeats, and the stream places (per user, per worker).
Under real gunicorn: tests/observability/test_event_stream_server.py."""
from __future__ import annotations

import json
import time

import pytest
from rest_framework.test import APIClient

from accounts import services as accounts
from accounts.models import APIToken, hash_token
from meetings.events import stream as event_stream
from meetings.lifecycle import transitions as lifecycle
from meetings.lifecycle.statuses import MeetingStatus, TransitionSource
from tests.factories import make_meeting, make_token, make_user

S = MeetingStatus
# The stream reads committed events and closes its database connection after the replay.
pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def quick_heartbeat(settings):
    settings.EVENT_STREAM_HEARTBEAT_SECONDS = 0.2
    return settings


@pytest.fixture
def streams():
    """Open streams (responses), closed at the end of the test."""
    opened = []
    yield opened
    for response in opened:
        response.close()


class Stream:
    def __init__(self, response):
        self.response = response
        self.chunks = iter(response.streaming_content)

    def next_chunk(self) -> bytes:
        return next(self.chunks)

    def event(self, timeout: float = 5) -> dict:
        """The next event frame ({"id", "event", "data"}), heartbeats skipped."""
        deadline = time.monotonic() + timeout
        while True:
            chunk = self.next_chunk().decode()
            if not chunk.startswith(":"):
                fields = dict(line.split(": ", 1) for line in chunk.strip("\n").split("\n"))
                return {**fields, "data": json.loads(fields["data"])}
            if time.monotonic() > deadline:
                raise AssertionError("no event within the timeout")

    def quiet(self) -> bool:
        """The next chunk is a heartbeat: nothing else was waiting to be sent."""
        return self.next_chunk() == b": heartbeat\n\n"


def open_stream(user, streams, headers=None, key=None, **params) -> Stream:
    client = APIClient()
    client.credentials(HTTP_X_API_KEY=key or make_token(user), **(headers or {}))
    response = client.get("/events/stream", params, HTTP_ACCEPT="text/event-stream")
    assert response.status_code == 200, response.content if not response.streaming else response
    streams.append(response)
    stream = Stream(response)
    assert stream.next_chunk() == b": stream open\n\n"
    return stream


def walk(meeting, *statuses) -> None:
    for status in statuses:
        lifecycle.transition(meeting.pk, status, source=TransitionSource.BOT_CALLBACK)


def to(frame) -> tuple[int, str]:
    return frame["data"]["payload"]["meeting"]["id"], frame["data"]["payload"]["status_change"]["to"]


def test_the_stream_is_server_sent_events_each_event_as_the_log_lists_it(api_user, api_client, streams):
    meeting = make_meeting(api_user)
    stream = open_stream(api_user, streams)

    assert stream.response["Content-Type"] == "text/event-stream"
    assert stream.response["Cache-Control"] == "no-cache"
    assert stream.response["X-Accel-Buffering"] == "no"
    frame = stream.event()
    [listed] = api_client.get("/events").json()["events"]
    assert frame == {"id": listed["cursor"], "event": "meeting.status_change", "data": listed}
    assert to(frame) == (meeting.pk, "requested")


def test_last_event_id_resumes_after_that_event(api_user, streams):
    meeting = make_meeting(api_user)
    walk(meeting, S.JOINING, S.ACTIVE)
    first = open_stream(api_user, streams)
    seen = first.event()

    resumed = open_stream(api_user, streams, headers={"HTTP_LAST_EVENT_ID": seen["id"]})
    assert [to(resumed.event()), to(resumed.event())] == [(meeting.pk, "joining"), (meeting.pk, "active")]
    assert resumed.quiet()


def test_last_event_id_wins_over_the_after_of_the_url(api_user, streams):
    meeting = make_meeting(api_user)
    walk(meeting, S.JOINING, S.ACTIVE)
    start = open_stream(api_user, streams)
    requested, joining = start.event(), start.event()

    resumed = open_stream(api_user, streams, headers={"HTTP_LAST_EVENT_ID": joining["id"]}, after=requested["id"])
    assert to(resumed.event()) == (meeting.pk, "active")


def test_after_resumes_without_the_header(api_user, streams):
    meeting = make_meeting(api_user)
    walk(meeting, S.JOINING)
    requested = open_stream(api_user, streams).event()

    assert to(open_stream(api_user, streams, after=requested["id"]).event()) == (meeting.pk, "joining")


def test_a_bad_last_event_id_is_refused_with_json_before_any_stream(api_user):
    client = APIClient()
    client.credentials(HTTP_X_API_KEY=make_token(api_user), HTTP_LAST_EVENT_ID="12:forged")
    response = client.get("/events/stream", HTTP_ACCEPT="text/event-stream")
    assert response.status_code == 422
    assert response["Content-Type"] == "application/json"
    assert "Invalid cursor" in response.json()["detail"]


def test_a_transition_made_after_the_replay_is_pushed(api_user, streams):
    meeting = make_meeting(api_user)
    stream = open_stream(api_user, streams)
    assert to(stream.event()) == (meeting.pk, "requested")
    assert stream.quiet()

    walk(meeting, S.JOINING)
    assert to(stream.event()) == (meeting.pk, "joining")


def test_a_pushed_events_id_resumes_from_where_the_log_was_final_when_the_stream_began(api_user, streams):
    """A pushed event may be overtaken by an earlier one committing late: its `id:` is the cursor
    of the stream's start (the log was final up to there), so a reconnect replays from there and
    the client skips what it saw by the event id."""
    meeting = make_meeting(api_user)
    stream = open_stream(api_user, streams)
    requested = stream.event()
    walk(meeting, S.JOINING)
    pushed = stream.event()
    assert pushed["id"] == requested["id"] == pushed["data"]["cursor"]

    resumed = open_stream(api_user, streams, headers={"HTTP_LAST_EVENT_ID": pushed["id"]})
    assert resumed.event()["data"]["id"] == pushed["data"]["id"]


def test_another_users_transitions_are_not_pushed(api_user, streams):
    stream = open_stream(api_user, streams)
    walk(make_meeting(make_user()), S.JOINING)
    mine = make_meeting(api_user)
    assert to(stream.event()) == (mine.pk, "requested")


def _replay_with(monkeypatch, before=None, after=None):
    """The stream's replay, with a transition committed just before it reads the log (`before`)
    or just after its last read (`after`): the two edges of the hand-over."""
    real = event_stream.events.replay

    def replay(user_id, position, batch):
        if before:
            before()
        yield from real(user_id, position, batch)
        if after:
            after()

    monkeypatch.setattr(event_stream.events, "replay", replay)


def test_an_event_committed_after_subscribing_but_before_the_replay_reads_is_sent_once(api_user, streams,
                                                                                       monkeypatch):
    meeting = make_meeting(api_user)
    _replay_with(monkeypatch, before=lambda: walk(meeting, S.JOINING))
    stream = open_stream(api_user, streams)

    assert [to(stream.event()), to(stream.event())] == [(meeting.pk, "requested"), (meeting.pk, "joining")]
    assert stream.quiet()  # its live copy was dropped
    walk(meeting, S.ACTIVE)
    assert to(stream.event()) == (meeting.pk, "active")


def test_an_event_committed_after_the_replay_read_the_log_comes_live(api_user, streams, monkeypatch):
    meeting = make_meeting(api_user)
    _replay_with(monkeypatch, after=lambda: walk(meeting, S.JOINING))
    stream = open_stream(api_user, streams)

    assert [to(stream.event()), to(stream.event())] == [(meeting.pk, "requested"), (meeting.pk, "joining")]
    assert stream.quiet()


def test_a_quiet_stream_sends_heartbeat_comments(api_user, streams):
    stream = open_stream(api_user, streams)
    started = time.monotonic()
    assert stream.next_chunk() == b": heartbeat\n\n"
    assert stream.next_chunk() == b": heartbeat\n\n"
    assert time.monotonic() - started >= 0.3


def test_a_user_holds_at_most_event_streams_per_user_streams(api_user, streams, settings):
    settings.EVENT_STREAMS_PER_USER = 2
    open_stream(api_user, streams)
    open_stream(api_user, streams)
    client = APIClient()
    client.credentials(HTTP_X_API_KEY=make_token(api_user))

    refused = client.get("/events/stream", HTTP_ACCEPT="text/event-stream")
    assert refused.status_code == 429
    assert "EVENT_STREAMS_PER_USER" in refused.json()["detail"]
    assert int(refused["Retry-After"]) >= 1  # the shape of every 429
    assert open_stream(make_user(), streams)  # another user's places are their own

    streams.pop(0).close()
    assert open_stream(api_user, streams)


def test_a_full_worker_answers_503(api_user, streams, settings):
    settings.EVENT_STREAMS_PER_WORKER = 1
    open_stream(api_user, streams)
    client = APIClient()
    client.credentials(HTTP_X_API_KEY=make_token(make_user()))

    refused = client.get("/events/stream")
    assert refused.status_code == 503
    assert refused.json()["detail"].startswith("This web worker holds as many event streams")


def test_sync_web_workers_refuse_streams(api_user, settings):
    settings.WEB_WORKER_CLASS = "sync"
    client = APIClient()
    client.credentials(HTTP_X_API_KEY=make_token(api_user))

    refused = client.get("/events/stream")
    assert refused.status_code == 503
    assert "WEB_WORKER_CLASS=gevent" in refused.json()["detail"]


def test_without_redis_a_stream_is_refused_with_json(api_user, monkeypatch):
    import redis

    from tests.observability.test_gunicorn import _free_port

    monkeypatch.setattr(event_stream, "get_redis", lambda: redis.Redis(port=_free_port(), socket_connect_timeout=1))
    client = APIClient()
    client.credentials(HTTP_X_API_KEY=make_token(api_user))

    refused = client.get("/events/stream")
    assert refused.status_code == 503
    assert refused.json()["detail"].startswith("Live events need Redis")


# --- A stream ends with its key ---------------------------------------------------------------------
def rest(stream: Stream, within: float) -> list[bytes]:
    """The chunks until the stream ends; fails if it still runs after `within` seconds."""
    deadline = time.monotonic() + within
    chunks = []
    for chunk in stream.chunks:
        chunks.append(chunk)
        if time.monotonic() > deadline:
            raise AssertionError(f"the stream still runs {within} s later: {chunks[-3:]}")
    return chunks


def record_of(key: str) -> APIToken:
    return APIToken.objects.get(token_hash=hash_token(key))


def test_a_stream_ends_within_a_heartbeat_of_its_keys_revocation(api_user, streams, settings):
    settings.EVENT_STREAM_HEARTBEAT_SECONDS = 0.5
    key = make_token(api_user)
    stream = open_stream(api_user, streams, key=key)
    assert stream.quiet()

    accounts.revoke_token(record_of(key).pk)

    assert rest(stream, within=0.5 + 0.5)[-1] == b": closed: the API key was revoked or its user deactivated\n\n"


def test_a_stream_ends_within_a_heartbeat_of_its_users_deactivation(api_user, streams, settings):
    settings.EVENT_STREAM_HEARTBEAT_SECONDS = 0.5
    stream = open_stream(api_user, streams)
    assert stream.quiet()

    accounts.update_user(api_user.pk, {"is_active": False})

    assert rest(stream, within=0.5 + 0.5)[-1].startswith(b": closed:")


def test_an_ended_stream_frees_its_places(api_user, streams, settings, redis_conn):
    settings.EVENT_STREAMS_PER_USER = 1
    key = make_token(api_user)
    stream = open_stream(api_user, streams, key=key)
    accounts.revoke_token(record_of(key).pk)
    rest(stream, within=1)
    streams.pop().close()  # the server closes the response whose body ended

    assert open_stream(api_user, streams)  # a key of theirs still valid gets the user's one place
    assert redis_conn.zcard(event_stream.ALL_PLACES_KEY) == 1


def test_revoking_another_key_of_the_user_leaves_the_stream_open(api_user, streams):
    stream = open_stream(api_user, streams)
    other = make_token(api_user)

    accounts.revoke_token(record_of(other).pk)

    assert stream.quiet() and stream.quiet() and stream.quiet()


# --- No few users take every place ------------------------------------------------------------------
@pytest.fixture
def places(settings, redis_conn):
    """One worker of 6 stream places, the service's 6 too, 2 of them reserved, 3 per user."""
    settings.EVENT_STREAMS_PER_WORKER = 6
    settings.EVENT_STREAMS_TOTAL = 6
    settings.EVENT_STREAMS_RESERVED = 2
    settings.EVENT_STREAMS_PER_USER = 3
    yield settings
    redis_conn.delete(event_stream.ALL_PLACES_KEY)


def try_stream(user, streams) -> int:
    client = APIClient()
    client.credentials(HTTP_X_API_KEY=make_token(user))
    response = client.get("/events/stream", HTTP_ACCEPT="text/event-stream")
    if response.status_code == 200:
        streams.append(response)
    return response.status_code


def test_a_few_users_asking_for_every_stream_they_may_leave_places_for_other_users(streams, places):
    """The attack: two users each ask for all the streams they may hold, at once over the
    worker's and the service's places. Two more users still get a stream each."""
    greedy = [make_user(), make_user()]
    got = {u.pk: [try_stream(u, streams) for _ in range(3)] for u in greedy}

    assert try_stream(make_user(), streams) == 200
    assert try_stream(make_user(), streams) == 200
    assert sorted(sum(got.values(), [])).count(200) == 4  # the shared places: 6 - 2 reserved


def test_a_further_stream_refused_for_the_reserve_answers_429_naming_it(streams, places):
    user = make_user()
    for _ in range(3):
        try_stream(make_user(), streams)
    open_stream(user, streams)  # the 4th place: the last shared one

    client = APIClient()
    client.credentials(HTTP_X_API_KEY=make_token(user))
    refused = client.get("/events/stream", HTTP_ACCEPT="text/event-stream")

    assert refused.status_code == 429
    assert "EVENT_STREAMS_RESERVED" in refused.json()["detail"]


def test_streams_held_on_other_workers_and_hosts_count_against_the_total(api_user, streams, places, redis_conn):
    far = time.time() + 60
    redis_conn.zadd(event_stream.ALL_PLACES_KEY, {f"elsewhere-{n}": far for n in range(6)})
    client = APIClient()
    client.credentials(HTTP_X_API_KEY=make_token(api_user))

    refused = client.get("/events/stream", HTTP_ACCEPT="text/event-stream")

    assert refused.status_code == 503
    assert "EVENT_STREAMS_TOTAL" in refused.json()["detail"]
    redis_conn.delete(event_stream.ALL_PLACES_KEY)
    assert open_stream(api_user, streams)


def test_the_places_of_a_worker_killed_mid_stream_lapse(api_user, streams, places, redis_conn):
    redis_conn.zadd(event_stream.ALL_PLACES_KEY, {f"dead-{n}": time.time() - 1 for n in range(6)})

    assert open_stream(api_user, streams)


def test_a_workers_streams_keys_are_asked_about_in_one_query_and_only_the_revoked_ones_end(
        api_user, streams, django_assert_num_queries):
    from meetings.events import stream_keys

    keys = [make_token(api_user) for _ in range(3)]
    for key in keys:
        open_stream(api_user, streams, key=key)
    accounts.revoke_token(record_of(keys[1]).pk)
    held = dict(stream_keys._open)

    with django_assert_num_queries(1):
        stream_keys._round(held)

    revoked = {token for token, key_hash in held.items() if key_hash == hash_token(keys[1])}
    assert {token for token in held if stream_keys.ended(token)} == revoked and len(revoked) == 1


def test_a_round_the_database_cannot_answer_ends_the_workers_streams(api_user, streams, monkeypatch):
    from django.db import OperationalError

    from meetings.events import stream_keys

    def database_down(_hashes):
        raise OperationalError("could not connect to server")

    open_stream(api_user, streams)
    held = dict(stream_keys._open)
    monkeypatch.setattr(stream_keys, "live_token_hashes", database_down)

    stream_keys._round(held)

    assert held and all(stream_keys.ended(token) for token in held)
