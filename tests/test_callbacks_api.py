"""Bot callbacks `/bots/internal/callback/<name>` (protocol.md "Bot protocol"): status moves, exit
codes, idempotency, `leave`, unknown sessions, and a restarted bot registering its new session with
its meeting token. No API key; real PostgreSQL and Redis; every response is JSON, never a 500."""
from __future__ import annotations

import time
import uuid

import jwt
import pytest
from rest_framework.test import APIClient

from meetings.bot_protocol import tokens
from meetings.bot_protocol.channels import current_uid_key
from meetings.lifecycle.statuses import MeetingStatus
from meetings.models import Meeting, MeetingSession, MeetingTransition
from tests.factories import make_meeting, make_session
from tests.http import answer

pytestmark = pytest.mark.django_db

S = MeetingStatus


@pytest.fixture
def bot():
    """A client with no API key: callbacks are authorized by the connection id (and the token)."""
    return APIClient()


def callback(client, name: str, body, token: str | None = None):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return client.post(f"/bots/internal/callback/{name}", body, format="json", headers=headers)


def launched(status: str = S.REQUESTED, **fields) -> tuple[Meeting, str]:
    """A meeting whose bot runs: its current session's uid is the bot's connection id."""
    meeting = make_meeting(status=status, **fields)
    session = make_session(meeting)
    meeting.refresh_from_db()
    return meeting, str(session.session_uid)


def applied_count(meeting) -> int:
    return MeetingTransition.objects.filter(meeting=meeting, applied=True).count()


def reload(meeting) -> Meeting:
    return Meeting.objects.get(pk=meeting.pk)


# --- Status moves ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name,from_status,to_status", [
    ("joining", S.REQUESTED, S.JOINING),
    ("awaiting_admission", S.JOINING, S.AWAITING_ADMISSION),
    ("awaiting_admission", S.REQUESTED, S.AWAITING_ADMISSION),
    ("started", S.AWAITING_ADMISSION, S.ACTIVE),
    ("started", S.JOINING, S.ACTIVE),  # (fix) Vexa forbade joining -> active
    ("started", S.REQUESTED, S.ACTIVE),
])
def test_a_status_callback_moves_the_meeting_and_answers_processed(bot, name, from_status, to_status):
    meeting, uid = launched(from_status)

    body = answer(callback(bot, name, {"connection_id": uid}), 200)

    assert body == {"status": "processed", "meeting_id": meeting.id, "meeting_status": to_status}
    assert reload(meeting).status == to_status
    last = meeting.transitions.last()
    assert (last.from_status, last.to_status, last.source, last.applied) == (from_status, to_status, "bot_callback", True)
    assert str(last.session.session_uid) == uid


def test_started_sets_the_start_time(bot):
    meeting, uid = launched(S.AWAITING_ADMISSION)

    answer(callback(bot, "started", {"connection_id": uid, "container_id": "c-1"}), 200)

    assert reload(meeting).start_time is not None
    assert meeting.transitions.last().metadata["container_id"] == "c-1"


def test_a_callback_needs_no_api_key_but_ignores_one(bot):
    meeting, uid = launched()
    bot.credentials(HTTP_X_API_KEY="bm_not-a-key")

    answer(callback(bot, "joining", {"connection_id": uid}), 200)


@pytest.mark.parametrize("status", ["joining", "awaiting_admission", "active"])
def test_status_change_to_a_live_status_moves_the_meeting(bot, status):
    meeting, uid = launched()

    body = answer(callback(bot, "status_change", {"connection_id": uid, "status": status,
                                                  "timestamp": "2025-01-01T00:00:00Z"}), 200)

    assert body == {"status": "processed", "meeting_id": meeting.id, "meeting_status": status}
    assert meeting.transitions.last().metadata["bot_timestamp"] == "2025-01-01T00:00:00Z"


def test_status_change_to_completed_takes_the_completion_reason_from_the_body(bot):
    meeting, uid = launched(S.ACTIVE)

    body = answer(callback(bot, "status_change", {"connection_id": uid, "status": "completed",
                                                  "completion_reason": "left_alone"}), 200)

    assert body["meeting_status"] == "completed"
    meeting = reload(meeting)
    assert meeting.completion_reason == "left_alone"
    assert meeting.data["completion_reason"] == "left_alone"


def test_status_change_to_failed_takes_the_stage_and_error_from_the_body(bot):
    meeting, uid = launched(S.ACTIVE)

    answer(callback(bot, "status_change", {"connection_id": uid, "status": "failed", "failure_stage": "joining",
                                           "error_details": {"code": "E1"}, "platform_specific_error": "x"}), 200)

    meeting = reload(meeting)
    assert (meeting.status, meeting.failure_stage) == ("failed", "joining")
    assert meeting.data["last_error"] == {"code": "E1"}
    assert meeting.data["platform_specific_error"] == "x"


# --- exited ---------------------------------------------------------------------------------------
def test_exit_code_0_completes_the_meeting_with_reason_stopped_by_default(bot):
    meeting, uid = launched(S.ACTIVE)

    body = answer(callback(bot, "exited", {"connection_id": uid, "exit_code": 0}), 200)

    assert body == {"status": "processed", "meeting_id": meeting.id, "meeting_status": "completed", "leave": True}
    meeting = reload(meeting)
    assert (meeting.status, meeting.completion_reason) == ("completed", "stopped")
    assert meeting.end_time is not None
    assert "last_error" not in meeting.data


@pytest.mark.parametrize("reason", ["left_alone", "evicted", "awaiting_admission_timeout",
                                    "awaiting_admission_rejected", "removed_by_admin", "admission_rejected_by_admin"])
def test_exit_code_0_takes_the_completion_reason_from_the_body(bot, reason):
    meeting, uid = launched(S.ACTIVE)

    answer(callback(bot, "exited", {"connection_id": uid, "exit_code": 0, "completion_reason": reason}), 200)

    assert reload(meeting).completion_reason == reason


@pytest.mark.parametrize("name,body", [("exited", {"exit_code": 0}),
                                       ("exited", {"exit_code": 0, "completion_reason": "stopped"}),
                                       ("status_change", {"status": "completed"})])
def test_a_bot_stopped_by_the_manager_completes_with_the_managers_reason(bot, name, body):
    from meetings.stopping import flow as stopping

    meeting, uid = launched(S.ACTIVE)
    stopping.request_stop(meeting.id, source="orphan_sweep", reason="max duration reached",
                          completion_reason="max_duration")

    answer(callback(bot, name, {"connection_id": uid, **body}), 200)

    meeting = reload(meeting)
    assert (meeting.status, meeting.completion_reason) == ("completed", "max_duration")
    assert meeting.data["completion_reason"] == "max_duration"


def test_a_bot_stopped_by_the_manager_keeps_its_own_specific_reason(bot):
    from meetings.stopping import flow as stopping

    meeting, uid = launched(S.ACTIVE)
    stopping.request_stop(meeting.id, source="orphan_sweep", reason="max duration", completion_reason="max_duration")

    answer(callback(bot, "exited", {"connection_id": uid, "exit_code": 0, "completion_reason": "left_alone"}), 200)

    assert reload(meeting).completion_reason == "left_alone"


def test_a_bot_stopped_by_its_user_completes_stopped(bot, api_client, api_user):
    meeting, uid = launched(S.ACTIVE, user=api_user)
    answer(api_client.delete(f"/bots/{meeting.platform}/{meeting.native_meeting_id}"), 202)

    answer(callback(bot, "exited", {"connection_id": uid, "exit_code": 0}), 200)

    assert reload(meeting).completion_reason == "stopped"


@pytest.mark.parametrize("from_status", [S.REQUESTED, S.JOINING, S.AWAITING_ADMISSION, S.ACTIVE, S.STOPPING])
def test_a_non_zero_exit_fails_the_meeting_in_the_stage_it_was_in(bot, from_status):
    meeting, uid = launched(from_status)

    body = answer(callback(bot, "exited", {"connection_id": uid, "exit_code": 1}), 200)

    assert body["meeting_status"] == "failed"
    meeting = reload(meeting)
    assert (meeting.status, meeting.failure_stage) == ("failed", from_status)
    assert meeting.data["failure_stage"] == from_status


def test_a_non_zero_exit_takes_the_stage_from_the_body_and_the_error_details_into_last_error(bot):
    meeting, uid = launched(S.ACTIVE)
    details = {"message": "browser crashed", "stack": ["a", "b"]}

    answer(callback(bot, "exited", {"connection_id": uid, "exit_code": 137, "failure_stage": "awaiting_admission",
                                    "reason": "crash", "error_details": details}), 200)

    meeting = reload(meeting)
    assert meeting.failure_stage == "awaiting_admission"
    assert meeting.data["last_error"] == details
    record = meeting.transitions.last()
    assert (record.reason, record.failure_stage, record.metadata["exit_code"]) == ("crash", "awaiting_admission", 137)


def test_a_non_zero_exit_without_details_keeps_the_reason_as_last_error(bot):
    meeting, uid = launched(S.ACTIVE)

    answer(callback(bot, "exited", {"connection_id": uid, "exit_code": 2, "reason": "self-test failed"}), 200)

    assert reload(meeting).data["last_error"] == "self-test failed"


def test_exited_records_the_sessions_end_and_exit_code(bot):
    meeting, uid = launched(S.ACTIVE)

    answer(callback(bot, "exited", {"connection_id": uid, "exit_code": 3}), 200)

    session = MeetingSession.objects.get(session_uid=uid)
    assert session.ended_at is not None
    assert session.exit_code == 3


def test_nul_characters_in_a_bots_report_are_dropped_not_a_500(bot):
    meeting, uid = launched(S.ACTIVE)

    answer(callback(bot, "exited", {"connection_id": uid, "exit_code": 1, "reason": "bad\u0000byte",
                                    "error_details": {"msg\u0000": "a\u0000b"}}), 200)

    meeting = reload(meeting)
    assert meeting.status == "failed"
    assert meeting.data["last_error"] == {"msg": "ab"}


def test_callbacks_still_move_the_meeting_while_redis_is_unreachable(bot, settings,
                                                                    django_capture_on_commit_callbacks):
    """Status events and the current-session mirror are after-commit notifications: a Redis outage
    is logged and never fails or undoes a callback (the database is the truth)."""
    from common.redis_client import get_redis

    meeting, uid = launched(S.JOINING)
    new_uid = str(uuid.uuid4())
    settings.REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens on port 1
    get_redis.cache_clear()
    try:
        with django_capture_on_commit_callbacks(execute=True):
            started = answer(callback(bot, "started", {"connection_id": uid}), 200)
            registered = answer(callback(bot, "exited", {"connection_id": new_uid, "exit_code": 0},
                                         token=tokens.issue(meeting)), 200)
    finally:
        get_redis.cache_clear()

    assert started["status"] == registered["status"] == "processed"
    assert registered["meeting_status"] == "completed"


# --- Idempotency and terminal meetings ------------------------------------------------------------
@pytest.mark.parametrize("name,body,from_status", [
    ("joining", {}, S.REQUESTED),
    ("started", {}, S.JOINING),
    ("exited", {"exit_code": 0}, S.ACTIVE),
    ("exited", {"exit_code": 1}, S.ACTIVE),
    ("status_change", {"status": "awaiting_admission"}, S.JOINING),
])
def test_the_same_callback_twice_answers_ok_the_second_time_and_records_nothing_more(bot, name, body, from_status):
    meeting, uid = launched(from_status)
    first = answer(callback(bot, name, {"connection_id": uid, **body}), 200)
    after_first = reload(meeting)
    records = MeetingTransition.objects.filter(meeting=meeting).count()

    second = answer(callback(bot, name, {"connection_id": uid, **body}), 200)

    assert first["status"] == "processed"
    assert second["status"] == "ok"
    assert second["meeting_status"] == first["meeting_status"]
    assert MeetingTransition.objects.filter(meeting=meeting).count() == records
    again = reload(meeting)
    assert (again.status, again.updated_at, again.data) == (after_first.status, after_first.updated_at, after_first.data)


@pytest.mark.parametrize("terminal", [S.COMPLETED, S.FAILED])
@pytest.mark.parametrize("name,body", [
    ("joining", {}), ("awaiting_admission", {}), ("started", {}),
    ("exited", {"exit_code": 0}), ("exited", {"exit_code": 1}),
    ("status_change", {"status": "active"}), ("status_change", {"status": "failed"}),
])
def test_a_callback_after_the_meeting_ended_answers_ok_with_leave_and_changes_nothing(bot, terminal, name, body):
    meeting, uid = launched(terminal, completion_reason="stopped")
    before = reload(meeting)
    applied = applied_count(meeting)

    response = answer(callback(bot, name, {"connection_id": uid, **body}), 200)

    assert response == {"status": "ok", "meeting_id": meeting.id, "meeting_status": terminal, "leave": True}
    after = reload(meeting)
    assert (after.status, after.completion_reason, after.failure_stage, after.data, after.end_time) == (
        before.status, before.completion_reason, before.failure_stage, before.data, before.end_time)
    assert applied_count(meeting) == applied


def test_a_backwards_callback_is_refused_recorded_and_answers_ok(bot):
    meeting, uid = launched(S.ACTIVE)

    body = answer(callback(bot, "joining", {"connection_id": uid}), 200)

    assert body == {"status": "ok", "meeting_id": meeting.id, "meeting_status": "active"}
    last = meeting.transitions.last()
    assert (last.from_status, last.to_status, last.applied) == ("active", "joining", False)


# --- leave ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,from_status", [("joining", S.REQUESTED), ("awaiting_admission", S.JOINING),
                                              ("started", S.AWAITING_ADMISSION)])
def test_no_leave_while_nobody_asked_for_a_stop(bot, name, from_status):
    _, uid = launched(from_status)

    assert "leave" not in answer(callback(bot, name, {"connection_id": uid}), 200)


def test_after_a_stop_request_every_callback_answers_leave(bot, api_client, api_user):
    meeting, uid = launched(S.ACTIVE, user=api_user)
    answer(api_client.delete(f"/bots/{meeting.platform}/{meeting.native_meeting_id}"), 202)
    assert reload(meeting).status == S.STOPPING

    started = answer(callback(bot, "started", {"connection_id": uid}), 200)
    exited = answer(callback(bot, "exited", {"connection_id": uid, "exit_code": 0}), 200)

    assert started == {"status": "ok", "meeting_id": meeting.id, "meeting_status": "stopping", "leave": True}
    assert exited == {"status": "processed", "meeting_id": meeting.id, "meeting_status": "completed", "leave": True}
    assert reload(meeting).completion_reason == "stopped"


# --- Unknown sessions and bad requests ------------------------------------------------------------
def test_an_unknown_connection_id_answers_404_json(bot):
    launched(S.ACTIVE)

    body = answer(callback(bot, "started", {"connection_id": str(uuid.uuid4())}), 404)

    assert "connection_id" in body["detail"]


@pytest.mark.parametrize("connection_id", ["not-a-uuid", "12345", "", "a\u0000b", "z" * 64])
def test_a_connection_id_that_is_not_a_uuid_answers_404_or_422_never_500(bot, connection_id):
    response = callback(bot, "joining", {"connection_id": connection_id})

    if connection_id == "":
        assert set(answer(response, 422)["errors"]) == {"connection_id"}
    else:
        answer(response, 404)


def test_an_unknown_callback_name_answers_404_json(bot):
    _, uid = launched()

    body = answer(callback(bot, "teleported", {"connection_id": uid}), 404)

    assert "teleported" in body["detail"]


@pytest.mark.parametrize("name,body,field", [
    ("joining", {}, "connection_id"),
    ("exited", {}, "connection_id"),
    ("exited", {"connection_id": "UID"}, "exit_code"),
    ("exited", {"connection_id": "UID", "exit_code": None}, "exit_code"),
    ("exited", {"connection_id": "UID", "exit_code": "boom"}, "exit_code"),
    ("exited", {"connection_id": "UID", "exit_code": 2**31}, "exit_code"),
    ("exited", {"connection_id": "UID", "exit_code": 0, "completion_reason": "r" * 65}, "completion_reason"),
    ("exited", {"connection_id": "UID", "exit_code": 1, "failure_stage": {"x": 1}}, "failure_stage"),
    ("status_change", {"connection_id": "UID"}, "status"),
    ("status_change", {"connection_id": "UID", "status": ""}, "status"),
    ("status_change", {"connection_id": "UID", "status": "s" * 65}, "status"),
])
def test_an_invalid_callback_body_answers_422_and_changes_nothing(bot, name, body, field):
    meeting, uid = launched(S.ACTIVE)
    records = MeetingTransition.objects.filter(meeting=meeting).count()
    body = {k: (uid if v == "UID" else v) for k, v in body.items()}

    response = answer(callback(bot, name, body), 422)

    assert field in response["errors"]
    assert reload(meeting).status == S.ACTIVE
    assert MeetingTransition.objects.filter(meeting=meeting).count() == records


@pytest.mark.parametrize("raw", ["[]", "null", '"joining"', '{"connection_id": '])
def test_a_callback_body_that_is_not_a_json_object_answers_422(bot, raw):
    response = bot.post("/bots/internal/callback/joining", raw, content_type="application/json")

    answer(response, 422)


def test_a_callback_by_get_answers_405_json(bot):
    answer(bot.get("/bots/internal/callback/joining"), 405)


# --- A restarted bot registers its new session with its meeting token -----------------------------
def _forge(claims: dict, secret: str) -> str:
    return jwt.encode(claims, secret, algorithm="HS256")


def test_an_unknown_connection_id_with_a_valid_token_registers_the_new_session_as_current(
        bot, redis_conn, django_capture_on_commit_callbacks):
    meeting, old_uid = launched(S.JOINING)
    new_uid = str(uuid.uuid4())
    redis_conn.delete(current_uid_key(meeting.id))
    try:
        with django_capture_on_commit_callbacks(execute=True):
            body = answer(callback(bot, "started", {"connection_id": new_uid}, token=tokens.issue(meeting)), 200)
        in_redis = redis_conn.get(current_uid_key(meeting.id))
    finally:
        redis_conn.delete(current_uid_key(meeting.id))

    assert body == {"status": "processed", "meeting_id": meeting.id, "meeting_status": "active"}
    session = MeetingSession.objects.get(session_uid=new_uid)
    assert session.meeting_id == meeting.id
    meeting = reload(meeting)
    assert meeting.current_session_id == session.id
    assert in_redis == new_uid
    assert MeetingSession.objects.filter(meeting=meeting).count() == 2
    assert str(meeting.transitions.last().session.session_uid) == new_uid


def test_after_registration_the_new_session_needs_no_token(bot):
    meeting, _ = launched(S.JOINING)
    new_uid = str(uuid.uuid4())
    answer(callback(bot, "awaiting_admission", {"connection_id": new_uid}, token=tokens.issue(meeting)), 200)

    body = answer(callback(bot, "started", {"connection_id": new_uid}), 200)

    assert body["status"] == "processed"
    assert reload(meeting).status == S.ACTIVE


def test_the_old_session_never_moves_the_meeting_after_the_bot_restarted(bot):
    meeting, old_uid = launched(S.ACTIVE)
    new_uid = str(uuid.uuid4())
    answer(callback(bot, "started", {"connection_id": new_uid}, token=tokens.issue(meeting)), 200)
    old_session = MeetingSession.objects.get(session_uid=old_uid)

    for name, body in [("exited", {"exit_code": 1}), ("exited", {"exit_code": 0}), ("joining", {}),
                       ("status_change", {"status": "completed"})]:
        response = answer(callback(bot, name, {"connection_id": old_uid, **body}), 200)
        assert response == {"status": "ok", "meeting_id": meeting.id, "meeting_status": "active", "leave": True}
        refused = meeting.transitions.last()
        assert (refused.applied, refused.session_id) == (False, old_session.id)
        assert "stale session" in refused.metadata["refused"]

    meeting = reload(meeting)
    assert meeting.status == S.ACTIVE
    assert meeting.current_session.session_uid == uuid.UUID(new_uid)
    assert "leave" not in answer(callback(bot, "started", {"connection_id": new_uid}), 200)


def test_registration_binds_the_session_to_the_tokens_meeting_only(bot):
    meeting, _ = launched(S.JOINING)
    other, other_uid = launched(S.JOINING)
    new_uid = str(uuid.uuid4())

    answer(callback(bot, "started", {"connection_id": new_uid}, token=tokens.issue(meeting)), 200)

    assert MeetingSession.objects.get(session_uid=new_uid).meeting_id == meeting.id
    other = reload(other)
    assert other.status == S.JOINING
    assert str(other.current_session.session_uid) == other_uid


def test_a_new_session_of_an_ended_meeting_is_recorded_but_does_not_become_current(bot):
    meeting, old_uid = launched(S.COMPLETED, completion_reason="stopped")
    new_uid = str(uuid.uuid4())

    body = answer(callback(bot, "started", {"connection_id": new_uid}, token=tokens.issue(meeting)), 200)

    assert body == {"status": "ok", "meeting_id": meeting.id, "meeting_status": "completed", "leave": True}
    meeting = reload(meeting)
    assert str(meeting.current_session.session_uid) == old_uid
    assert meeting.status == S.COMPLETED


def _bad_tokens(meeting) -> dict[str, str]:
    from django.conf import settings

    good = {"meeting_id": meeting.id, "user_id": meeting.user_id, "platform": meeting.platform,
            "native_meeting_id": meeting.native_meeting_id, "exp": int(time.time()) + 600}
    return {
        "garbage": "not.a.jwt",
        "other secret": _forge(good, "someone-elses-secret-" + "x" * 40),
        "expired": _forge({**good, "exp": int(time.time()) - 10}, settings.BOT_TOKEN_SECRET),
        "no exp": _forge({k: v for k, v in good.items() if k != "exp"}, settings.BOT_TOKEN_SECRET),
        "no meeting_id": _forge({k: v for k, v in good.items() if k != "meeting_id"}, settings.BOT_TOKEN_SECRET),
        "string meeting_id": _forge({**good, "meeting_id": str(meeting.id)}, settings.BOT_TOKEN_SECRET),
        "unknown meeting": _forge({**good, "meeting_id": meeting.id + 10_000}, settings.BOT_TOKEN_SECRET),
        "alg none": jwt.encode(good, None, algorithm="none"),
    }


@pytest.mark.parametrize("kind", ["garbage", "other secret", "expired", "no exp", "no meeting_id",
                                  "string meeting_id", "unknown meeting", "alg none"])
def test_an_unknown_connection_id_with_an_invalid_token_answers_404_and_registers_nothing(bot, kind):
    meeting, old_uid = launched(S.JOINING)
    new_uid = str(uuid.uuid4())

    answer(callback(bot, "started", {"connection_id": new_uid}, token=_bad_tokens(meeting)[kind]), 404)

    assert not MeetingSession.objects.filter(session_uid=new_uid).exists()
    meeting = reload(meeting)
    assert meeting.status == S.JOINING
    assert str(meeting.current_session.session_uid) == old_uid


def test_a_token_not_sent_as_bearer_registers_nothing(bot):
    meeting, _ = launched(S.JOINING)
    new_uid = str(uuid.uuid4())

    response = bot.post("/bots/internal/callback/started", {"connection_id": new_uid}, format="json",
                        headers={"Authorization": f"Token {tokens.issue(meeting)}"})

    answer(response, 404)
    assert not MeetingSession.objects.filter(session_uid=new_uid).exists()
