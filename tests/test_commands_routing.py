"""Command routing to the bot's current session: a stop must not publish `leave` to the *earliest*
session, or a bot that had restarted (a new session) never gets it and its meeting never stops. protocol.md: commands go to
`bot_commands:meeting:{id}` and to `bot_commands:{uid}` of the current session, taken from Redis
`bm:meeting:{id}:current_uid`, else the newest MeetingSession (never the oldest).
Real PostgreSQL and Redis; every response is JSON, never a 500."""
from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from meetings.bot_protocol import channels, tokens
from meetings.bot_protocol.channels import current_uid_key, meeting_channel, session_channel
from meetings.lifecycle.statuses import MeetingStatus
from meetings.models import Meeting, MeetingSession
from tests.factories import make_meeting, make_session
from tests.http import answer
from tests.support import published, subscribe

pytestmark = pytest.mark.django_db

MEET_ID = "abc-defg-hij"


@pytest.fixture
def restarted(api_user, redis_conn):
    """An active meeting whose bot restarted: the oldest session (started 10 minutes ago) is dead,
    the newest is current. No Redis current_uid key (cleared before and after the test)."""
    meeting = make_meeting(api_user, status=MeetingStatus.ACTIVE, native_meeting_id=MEET_ID,
                           bot_container_id="container-1")
    oldest = make_session(meeting)
    MeetingSession.objects.filter(pk=oldest.pk).update(started_at=timezone.now() - timedelta(minutes=10))
    newest = make_session(meeting)  # current
    redis_conn.delete(current_uid_key(meeting.id))
    yield meeting, str(oldest.session_uid), str(newest.session_uid)
    redis_conn.delete(current_uid_key(meeting.id))


def test_a_stop_sends_leave_to_the_newest_session_not_the_oldest(
        api_client, redis_conn, restarted, django_capture_on_commit_callbacks):
    meeting, oldest, newest = restarted
    pubsub = subscribe(redis_conn, meeting_channel(meeting.id), session_channel(oldest), session_channel(newest))

    with django_capture_on_commit_callbacks(execute=True):
        answer(api_client.delete(f"/bots/google_meet/{MEET_ID}"), 202)

    got = published(pubsub)
    assert set(got) == {meeting_channel(meeting.id), session_channel(newest)}
    [leave] = got[session_channel(newest)]
    assert (leave["action"], leave["meeting_id"], leave["connection_id"]) == ("leave", meeting.id, newest)
    assert got[meeting_channel(meeting.id)] == [leave]


def test_without_the_redis_key_the_current_session_is_the_newest_session(restarted, redis_conn):
    meeting, oldest, newest = restarted
    assert redis_conn.get(current_uid_key(meeting.id)) is None

    assert channels.current_session_uid(meeting.id) == newest


def test_with_neither_the_redis_key_nor_a_current_session_on_the_row_the_newest_session_is_used(api_user, redis_conn):
    meeting = make_meeting(api_user, status=MeetingStatus.ACTIVE)
    later = make_session(meeting, current=False)
    earlier = make_session(meeting, current=False)  # the higher id, but started first
    MeetingSession.objects.filter(pk=earlier.pk).update(started_at=timezone.now() - timedelta(minutes=5))
    redis_conn.delete(current_uid_key(meeting.id))

    assert channels.current_session_uid(meeting.id) == str(later.session_uid)


def test_after_three_restarts_the_stop_reaches_the_last_session(
        api_client, api_user, redis_conn, django_capture_on_commit_callbacks):
    meeting = make_meeting(api_user, status=MeetingStatus.ACTIVE, native_meeting_id=MEET_ID)
    sessions = [make_session(meeting) for _ in range(4)]
    for age, session in zip((30, 20, 10), sessions):
        MeetingSession.objects.filter(pk=session.pk).update(started_at=timezone.now() - timedelta(minutes=age))
    uids = [str(s.session_uid) for s in sessions]
    redis_conn.delete(current_uid_key(meeting.id))
    pubsub = subscribe(redis_conn, *(session_channel(uid) for uid in uids))

    with django_capture_on_commit_callbacks(execute=True):
        answer(api_client.delete(f"/bots/google_meet/{MEET_ID}"), 202)

    assert set(published(pubsub)) == {session_channel(uids[-1])}


def test_the_redis_key_names_the_current_session_when_the_row_has_none(api_user, redis_conn):
    meeting = make_meeting(api_user, status=MeetingStatus.ACTIVE)
    named = make_session(meeting, current=False)
    make_session(meeting, current=False)  # newer, but Redis names the other
    redis_conn.set(current_uid_key(meeting.id), str(named.session_uid))
    try:
        assert channels.current_session_uid(meeting.id) == str(named.session_uid)
    finally:
        redis_conn.delete(current_uid_key(meeting.id))


def test_a_stale_redis_key_naming_the_old_session_does_not_misroute_the_stop(
        api_client, redis_conn, restarted, django_capture_on_commit_callbacks):
    """The key is only a mirror written after commit: if it still names the dead session, the
    meeting row's current session wins."""
    meeting, oldest, newest = restarted
    redis_conn.set(current_uid_key(meeting.id), oldest)
    pubsub = subscribe(redis_conn, session_channel(oldest), session_channel(newest))

    with django_capture_on_commit_callbacks(execute=True):
        answer(api_client.delete(f"/bots/google_meet/{MEET_ID}"), 202)

    assert set(published(pubsub)) == {session_channel(newest)}


def test_a_reconfigure_goes_to_the_newest_session_too(
        api_client, redis_conn, restarted, django_capture_on_commit_callbacks):
    meeting, oldest, newest = restarted
    pubsub = subscribe(redis_conn, session_channel(oldest), session_channel(newest))

    with django_capture_on_commit_callbacks(execute=True):
        answer(api_client.put(f"/bots/google_meet/{MEET_ID}/config", {"language": "es"}, format="json"), 202)

    got = published(pubsub)
    assert set(got) == {session_channel(newest)}
    assert (got[session_channel(newest)][0]["action"], got[session_channel(newest)][0]["uid"]) == ("reconfigure", newest)


def test_a_bot_that_restarts_and_registers_then_gets_the_stop(
        api_client, api_user, redis_conn, django_capture_on_commit_callbacks):
    """The whole restarted-bot path: launch sets the key to the first session; the bot restarts, registers its new
    session with its token (the key follows); the stop reaches the new session only."""
    meeting = make_meeting(api_user, status=MeetingStatus.JOINING, native_meeting_id=MEET_ID)
    first = str(make_session(meeting).session_uid)
    redis_conn.set(current_uid_key(meeting.id), first)
    second = str(uuid.uuid4())
    try:
        with django_capture_on_commit_callbacks(execute=True):
            answer(APIClient().post("/bots/internal/callback/started", {"connection_id": second}, format="json",
                                    headers={"Authorization": f"Bearer {tokens.issue(meeting)}"}), 200)
        assert redis_conn.get(current_uid_key(meeting.id)) == second
        pubsub = subscribe(redis_conn, session_channel(first), session_channel(second))

        with django_capture_on_commit_callbacks(execute=True):
            answer(api_client.delete(f"/bots/google_meet/{MEET_ID}"), 202)
    finally:
        redis_conn.delete(current_uid_key(meeting.id))

    got = published(pubsub)
    assert set(got) == {session_channel(second)}
    assert got[session_channel(second)][0]["connection_id"] == second
    assert Meeting.objects.get(pk=meeting.pk).status == MeetingStatus.STOPPING


def test_a_meeting_without_any_session_publishes_on_the_meeting_channel_only(redis_conn):
    meeting = make_meeting(status=MeetingStatus.ACTIVE)
    redis_conn.delete(current_uid_key(meeting.id))
    pubsub = subscribe(redis_conn, meeting_channel(meeting.id))

    assert channels.publish_leave(meeting.id) is None

    [leave] = published(pubsub)[meeting_channel(meeting.id)]
    assert (leave["action"], leave["connection_id"]) == ("leave", None)


def test_a_bot_that_registered_during_a_redis_outage_still_gets_the_stop(
        api_client, api_user, redis_conn, settings, django_capture_on_commit_callbacks):
    """Redis refuses connections while the restarted bot registers (its key keeps naming the first
    session); once Redis is back, the stop must reach the new session."""
    from common.redis_client import get_redis

    meeting = make_meeting(api_user, status=MeetingStatus.JOINING, native_meeting_id=MEET_ID)
    first = str(make_session(meeting).session_uid)
    redis_conn.set(current_uid_key(meeting.id), first)
    second = str(uuid.uuid4())
    real_redis_url = settings.REDIS_URL
    try:
        settings.REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens on port 1
        get_redis.cache_clear()
        with django_capture_on_commit_callbacks(execute=True):
            body = answer(APIClient().post("/bots/internal/callback/started", {"connection_id": second},
                                           format="json",
                                           headers={"Authorization": f"Bearer {tokens.issue(meeting)}"}), 200)
        assert body["status"] == "processed"
        settings.REDIS_URL = real_redis_url
        get_redis.cache_clear()
        assert redis_conn.get(current_uid_key(meeting.id)) == first  # the mirror lags
        pubsub = subscribe(redis_conn, session_channel(first), session_channel(second))

        with django_capture_on_commit_callbacks(execute=True):
            answer(api_client.delete(f"/bots/google_meet/{MEET_ID}"), 202)
    finally:
        settings.REDIS_URL = real_redis_url
        get_redis.cache_clear()
        redis_conn.delete(current_uid_key(meeting.id))

    got = published(pubsub)
    assert set(got) == {session_channel(second)}
    assert got[session_channel(second)][0]["connection_id"] == second
