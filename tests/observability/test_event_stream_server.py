"""`GET /events/stream` under real gunicorn with its gevent workers (botmanager/gunicorn_conf.py):
a transition made after the stream opened is pushed; held streams hold no PostgreSQL connection
and no request place (callbacks answer beyond WEB_WORKER_CONNECTIONS streams); a client that goes
away frees its stream's place."""
from __future__ import annotations

import json
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from django.db import connection

from meetings.lifecycle import transitions as lifecycle
from meetings.lifecycle.statuses import MeetingStatus, TransitionSource
from tests.factories import make_meeting, make_session, make_token, make_user
from tests.observability.test_gunicorn import gunicorn_factory  # noqa: F401  (the fixture)
from tests.waiting import wait_for

pytestmark = pytest.mark.django_db(transaction=True)


class SSE:
    """A stream read frame by frame (`\\n\\n`-separated) as the chunks arrive."""

    def __init__(self, url: str, key: str, **headers):
        self.response = requests.get(url + "/events/stream", stream=True, timeout=10,
                                     headers={"X-API-Key": key, "Accept": "text/event-stream", **headers})
        self.status = self.response.status_code
        self._chunks = self.response.iter_content(chunk_size=None) if self.status == 200 else iter(())
        self._buffer = b""

    def frame(self) -> str:
        while b"\n\n" not in self._buffer:
            self._buffer += next(self._chunks)
        frame, self._buffer = self._buffer.split(b"\n\n", 1)
        return frame.decode()

    def event(self) -> dict:
        while (frame := self.frame()).startswith(":"):
            pass
        fields = dict(line.split(": ", 1) for line in frame.split("\n"))
        return {**fields, "data": json.loads(fields["data"])}

    def close(self) -> None:
        self.response.close()


@pytest.fixture
def opened():
    streams: list[SSE] = []
    yield streams
    for stream in streams:
        stream.close()


def _server_connections(app_name: str) -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", [app_name])
        return cursor.fetchone()[0]


def test_a_transition_made_after_the_stream_opened_is_pushed(gunicorn_factory, opened):  # noqa: F811
    user = make_user()
    meeting = make_meeting(user)
    server = gunicorn_factory(workers=2, EVENT_STREAM_HEARTBEAT_SECONDS="1")
    stream = SSE(server.url, make_token(user))
    opened.append(stream)
    assert stream.status == 200 and stream.response.headers["Content-Type"] == "text/event-stream"
    assert stream.response.headers["X-Accel-Buffering"] == "no"
    assert stream.event()["data"]["payload"]["status_change"]["to"] == "requested"

    lifecycle.transition(meeting.pk, MeetingStatus.JOINING, source=TransitionSource.BOT_CALLBACK)
    pushed = stream.event()
    assert pushed["event"] == "meeting.status_change"
    assert pushed["data"]["payload"]["status_change"] == {
        **pushed["data"]["payload"]["status_change"], "from": "requested", "to": "joining"}

    # Reconnecting with the last id seen: the pushed event again (its id resumes from where the
    # stream's log was final), then what came since.
    resumed = SSE(server.url, make_token(user), **{"Last-Event-ID": pushed["id"]})
    opened.append(resumed)
    lifecycle.transition(meeting.pk, MeetingStatus.ACTIVE, source=TransitionSource.BOT_CALLBACK)
    again = resumed.event()
    assert again["data"]["id"] == pushed["data"]["id"]
    assert resumed.event()["data"]["payload"]["status_change"]["to"] == "active"


def test_held_streams_hold_no_database_connection_and_no_request_place(gunicorn_factory, opened):  # noqa: F811
    """One worker with places for 2 requests and 10 streams, 8 streams held: 8 callbacks at once
    all answer, and while the streams wait the worker holds no PostgreSQL connection (kept ones
    would stay: DB_CONN_MAX_AGE=600)."""
    app_name = f"bm-stream-test-{uuid.uuid4().hex[:8]}"
    user = make_user()
    meeting = make_meeting(user)
    sessions = [str(make_session(make_meeting(make_user())).session_uid) for _ in range(8)]
    server = gunicorn_factory(workers=1, WEB_WORKER_CONNECTIONS="2", EVENT_STREAMS_PER_WORKER="10",
                              EVENT_STREAMS_PER_USER="10", DB_CONN_MAX_AGE="600", PGAPPNAME=app_name,
                              EVENT_STREAM_HEARTBEAT_SECONDS="1")
    key = make_token(user)
    for _ in range(8):
        stream = SSE(server.url, key)
        opened.append(stream)
        assert stream.status == 200
        assert stream.event()["data"]["payload"]["meeting"]["id"] == meeting.pk  # the replay has run

    wait_for(lambda: _server_connections(app_name) == 0, timeout=5, what="the streams' connections to close")

    def callback(uid: str) -> int:
        return requests.post(server.url + "/bots/internal/callback/joining", json={"connection_id": uid},
                             headers={"Connection": "close"}, timeout=10).status_code

    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(callback, sessions)) == [200] * 8

    lifecycle.transition(meeting.pk, MeetingStatus.JOINING, source=TransitionSource.BOT_CALLBACK)
    assert all(s.event()["data"]["payload"]["status_change"]["to"] == "joining" for s in opened)


def test_a_client_that_goes_away_frees_its_place(gunicorn_factory, opened):  # noqa: F811
    user = make_user()
    server = gunicorn_factory(workers=1, EVENT_STREAMS_PER_USER="1", EVENT_STREAM_HEARTBEAT_SECONDS="0.5")
    key = make_token(user)
    first = SSE(server.url, key)
    assert first.status == 200 and first.frame() == ": stream open"
    refused = SSE(server.url, key)
    assert refused.status == 429 and "EVENT_STREAMS_PER_USER" in refused.response.json()["detail"]

    first.close()
    again = wait_for(lambda: (stream := SSE(server.url, key)).status != 429 and stream, timeout=5, interval=0.2,
                     what="the place the client left to be free")
    opened.append(again)
    assert again.status == 200


def test_a_held_stream_ends_within_a_heartbeat_of_its_keys_revocation(gunicorn_factory, opened):  # noqa: F811
    from accounts.models import APIToken, hash_token
    from accounts.services import revoke_token

    user = make_user()
    server = gunicorn_factory(workers=1, EVENT_STREAM_HEARTBEAT_SECONDS="0.5")
    key = make_token(user)
    stream = SSE(server.url, key)
    opened.append(stream)
    assert stream.status == 200 and stream.frame() == ": stream open"
    assert stream.frame() == ": heartbeat"

    revoke_token(APIToken.objects.get(token_hash=hash_token(key)).pk)
    revoked = time.monotonic()
    frames, ended = [], None
    while ended is None and time.monotonic() < revoked + 5:
        try:
            frames.append(stream.frame())
        except StopIteration:  # the server ended the response
            ended = time.monotonic()

    assert ended is not None and ended - revoked < 0.5 + 0.5, frames[-3:]
    assert frames[-1] == ": closed: the API key was revoked or its user deactivated"
    assert SSE(server.url, key).status == 403
