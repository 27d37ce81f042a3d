"""`/bots`: request a bot (validation, limit, duplicates), stop it, reconfigure it, and list the
running bots (protocol.md "User API"). Real PostgreSQL and Redis; every response is JSON, never a 500."""
from __future__ import annotations

import contextlib
import json
import re
import sys
from datetime import datetime

import pytest

from meetings.bot_protocol.channels import current_uid_key, meeting_channel, session_channel
from meetings.lifecycle.statuses import LIVE, MeetingStatus
from meetings.models import Meeting, MeetingTransition
from orchestrators.base import OrchestratorError
from tests.factories import make_meeting, make_session, make_token, make_user
from tests.http import answer
from tests.support import published, subscribe

pytestmark = pytest.mark.django_db

MEETING_FIELDS = {"id", "user_id", "platform", "native_meeting_id", "constructed_meeting_url", "status",
                  "bot_container_id", "start_time", "end_time", "data", "created_at", "updated_at",
                  "deadline_at", "deadline_action"}
MEET_ID = "abc-defg-hij"


def post_bot(client, **body):
    return client.post("/bots", body, format="json")


def count_meetings(user) -> int:
    return Meeting.objects.filter(user=user).count()


def utc_iso(value: str) -> datetime:
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    assert parsed.utcoffset().total_seconds() == 0, value
    return parsed


# --- POST /bots: the response ---------------------------------------------------------------------
def test_post_bot_answers_201_with_exactly_the_meeting_response_fields(api_client, api_user):
    body = answer(post_bot(api_client, platform="google_meet", native_meeting_id=MEET_ID), 201)

    assert set(body) == MEETING_FIELDS
    meeting = Meeting.objects.get(user=api_user)
    assert body["id"] == meeting.id
    assert body["user_id"] == api_user.id
    assert body["platform"] == "google_meet"
    assert body["native_meeting_id"] == MEET_ID
    assert body["constructed_meeting_url"] == f"https://meet.google.com/{MEET_ID}"
    assert body["status"] == "requested"
    assert body["bot_container_id"] is None
    assert body["start_time"] is None and body["end_time"] is None
    assert utc_iso(body["created_at"]) <= utc_iso(body["updated_at"])


def test_post_bot_keeps_bot_name_language_and_task_in_data(api_client):
    body = answer(post_bot(api_client, platform="google_meet", native_meeting_id=MEET_ID,
                           bot_name="Recorder", language="fr", task="translate"), 201)

    assert body["data"] == {"bot_name": "Recorder", "language": "fr", "task": "translate"}
    assert Meeting.objects.get(pk=body["id"]).data == body["data"]


def test_post_bot_records_the_requested_transition(api_client):
    body = answer(post_bot(api_client, platform="google_meet", native_meeting_id=MEET_ID), 201)

    record = MeetingTransition.objects.get(meeting_id=body["id"])
    assert (record.from_status, record.to_status, record.source, record.applied) == ("", "requested", "user", True)


def test_after_commit_the_request_enqueues_exactly_one_launch(api_client, monkeypatch,
                                                             django_capture_on_commit_callbacks):
    from meetings import tasks

    enqueued: list[int] = []
    monkeypatch.setattr(tasks.launch_bot, "delay", enqueued.append)  # observe, do not send

    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        body = answer(post_bot(api_client, platform="google_meet", native_meeting_id=MEET_ID), 201)

    assert callbacks
    assert enqueued == [body["id"]]


def test_when_the_broker_refuses_the_launch_the_meeting_fails_with_last_error_not_a_500(
        api_client, monkeypatch, django_capture_on_commit_callbacks):
    """A fake broker outage (the error path of `delay`); the database and the rest are real."""
    from kombu.exceptions import OperationalError

    from meetings import tasks

    def broker_down(*args, **kwargs):
        raise OperationalError("Error 111 connecting to broker. Connection refused.")

    monkeypatch.setattr(tasks.launch_bot, "delay", broker_down)

    with django_capture_on_commit_callbacks(execute=True):
        body = answer(post_bot(api_client, platform="google_meet", native_meeting_id=MEET_ID), 201)

    meeting = Meeting.objects.get(pk=body["id"])
    assert (meeting.status, meeting.failure_stage) == ("failed", "requested")
    assert "task queue is unavailable" in meeting.data["last_error"]
    last = meeting.transitions.last()
    assert (last.from_status, last.to_status, last.source) == ("requested", "failed", "launch")
    assert "Connection refused" in last.metadata["error"]  # the operator's (the admin shows it)
    # The seat is free again: the user can ask once more.
    answer(post_bot(api_client, platform="google_meet", native_meeting_id=MEET_ID), 201)


# --- POST /bots: per-platform validation ----------------------------------------------------------
@pytest.mark.parametrize("native_id", ["abc-defg-hi", "abcd-defg-hij", "ABC-DEFG-HIJ", "abcdefghij",
                                       "abc-defg-hij-klm", "123-4567-890", "abc_defg_hij"])
def test_google_meet_id_not_matching_the_pattern_answers_422_on_native_meeting_id(api_client, api_user, native_id):
    body = answer(post_bot(api_client, platform="google_meet", native_meeting_id=native_id), 422)

    assert set(body["errors"]) == {"native_meeting_id"}
    assert body["detail"]
    assert count_meetings(api_user) == 0


def test_google_meet_refuses_a_passcode_with_422_on_passcode(api_client, api_user):
    body = answer(post_bot(api_client, platform="google_meet", native_meeting_id=MEET_ID, passcode="secret123"), 422)

    assert set(body["errors"]) == {"passcode"}
    assert count_meetings(api_user) == 0


@pytest.mark.parametrize("native_id", ["1234567890", "123456789012345"])
def test_teams_accepts_ids_of_10_to_15_digits(api_client, native_id):
    body = answer(post_bot(api_client, platform="teams", native_meeting_id=native_id), 201)

    assert body["constructed_meeting_url"] == f"https://teams.live.com/meet/{native_id}"


@pytest.mark.parametrize("native_id", ["123456789", "1234567890123456", "12345abcde", "abc-defg-hij"])
def test_teams_id_not_of_10_to_15_digits_answers_422_on_native_meeting_id(api_client, api_user, native_id):
    body = answer(post_bot(api_client, platform="teams", native_meeting_id=native_id), 422)

    assert set(body["errors"]) == {"native_meeting_id"}
    assert count_meetings(api_user) == 0


def test_teams_passcode_goes_into_the_url_as_p(api_client):
    body = answer(post_bot(api_client, platform="teams", native_meeting_id="9876543210", passcode="Abc123xyZ"), 201)

    assert body["constructed_meeting_url"] == "https://teams.live.com/meet/9876543210?p=Abc123xyZ"


@pytest.mark.parametrize("passcode", ["abc1234", "a" * 21, "abc-12345", "abc 12345", "pässwort1"])
def test_teams_passcode_not_of_8_to_20_letters_or_digits_answers_422_on_passcode(api_client, api_user, passcode):
    body = answer(post_bot(api_client, platform="teams", native_meeting_id="9876543210", passcode=passcode), 422)

    assert set(body["errors"]) == {"passcode"}
    assert count_meetings(api_user) == 0


@pytest.mark.parametrize("native_id", ["123456789", "12345678901"])
def test_zoom_accepts_ids_of_9_to_11_digits(api_client, native_id):
    body = answer(post_bot(api_client, platform="zoom", native_meeting_id=native_id), 201)

    assert body["constructed_meeting_url"] == f"https://zoom.us/j/{native_id}"


@pytest.mark.parametrize("native_id", ["12345678", "123456789012", "12345678a"])
def test_zoom_id_not_of_9_to_11_digits_answers_422_on_native_meeting_id(api_client, api_user, native_id):
    body = answer(post_bot(api_client, platform="zoom", native_meeting_id=native_id), 422)

    assert set(body["errors"]) == {"native_meeting_id"}
    assert count_meetings(api_user) == 0


def test_zoom_passcode_goes_into_the_url_as_pwd(api_client):
    body = answer(post_bot(api_client, platform="zoom", native_meeting_id="123456789", passcode="xyz"), 201)

    assert body["constructed_meeting_url"] == "https://zoom.us/j/123456789?pwd=xyz"


@pytest.mark.parametrize("body,field", [
    ({"platform": "webex", "native_meeting_id": MEET_ID}, "platform"),
    ({"platform": "", "native_meeting_id": MEET_ID}, "platform"),
    ({"platform": "google_meet", "native_meeting_id": MEET_ID, "task": "summarize"}, "task"),
    ({"native_meeting_id": MEET_ID}, "platform"),
    ({"platform": "google_meet"}, "native_meeting_id"),
    ({"platform": "google_meet", "native_meeting_id": ""}, "native_meeting_id"),
    ({"platform": "google_meet", "native_meeting_id": None}, "native_meeting_id"),
    ({"platform": ["google_meet"], "native_meeting_id": MEET_ID}, "platform"),
    ({"platform": "google_meet", "native_meeting_id": MEET_ID, "bot_name": "x" * 101}, "bot_name"),
    ({"platform": "google_meet", "native_meeting_id": MEET_ID, "bot_name": "a\u0000b"}, "bot_name"),
])
def test_invalid_field_answers_422_with_that_field_in_errors(api_client, api_user, body, field):
    response = answer(api_client.post("/bots", body, format="json"), 422)

    assert field in response["errors"]
    assert response["detail"].startswith("Invalid request")
    assert count_meetings(api_user) == 0


@pytest.mark.parametrize("raw", ["[]", '"google_meet"', "42", "null", "true"])
def test_a_json_body_that_is_not_an_object_answers_422(api_client, api_user, raw):
    body = answer(api_client.post("/bots", raw, content_type="application/json"), 422)

    assert body["errors"] == {"non_field_errors": ["The request body must be a JSON object."]}
    assert count_meetings(api_user) == 0


@pytest.mark.parametrize("raw", ['{"platform": "google_meet",', "{platform: google_meet}", "\x00", "{"])
def test_malformed_json_answers_422_json(api_client, api_user, raw):
    body = answer(api_client.post("/bots", raw, content_type="application/json"), 422)

    assert body["detail"].startswith("Malformed JSON body")
    assert count_meetings(api_user) == 0


def test_an_empty_body_answers_422_naming_the_required_fields(api_client):
    body = answer(api_client.post("/bots", "", content_type="application/json"), 422)

    assert {"platform", "native_meeting_id"} <= set(body["errors"])


# --- The passcode is never shown outside the URL --------------------------------------------------
def test_the_passcode_appears_in_no_response_except_inside_the_url(api_client):
    passcode = "Zq7Passcode42"
    created = answer(post_bot(api_client, platform="teams", native_meeting_id="1234567890", passcode=passcode), 201)
    patched = answer(api_client.patch("/meetings/teams/1234567890", {"data": {"notes": "n"}}, format="json"), 200)
    listed = answer(api_client.get("/meetings"), 200)
    detail = answer(api_client.get(f"/meetings/{created['id']}"), 200)

    assert Meeting.objects.get(pk=created["id"]).data["passcode"] == passcode  # kept for the bot
    for body in (created, patched, listed["meetings"][0], detail):
        assert "passcode" not in body["data"]
        assert body["constructed_meeting_url"] == f"https://teams.live.com/meet/1234567890?p={passcode}"
        assert json.dumps(body).count(passcode) == 1  # only inside the URL


def test_the_passcode_is_not_shown_once_the_meeting_failed_either(api_client):
    passcode = "pw-secret.1"
    created = answer(post_bot(api_client, platform="zoom", native_meeting_id="123456789", passcode=passcode), 201)
    session = make_session(Meeting.objects.get(pk=created["id"]))
    answer(api_client.post("/bots/internal/callback/exited",
                           {"connection_id": str(session.session_uid), "exit_code": 3}, format="json"), 200)

    detail = answer(api_client.get(f"/meetings/{created['id']}"), 200)
    assert detail["status"] == "failed"
    assert json.dumps(detail).count(passcode) == 1


# --- 409 duplicates -------------------------------------------------------------------------------
@pytest.mark.parametrize("live_status", sorted(LIVE))
def test_a_second_request_while_the_meeting_is_live_answers_409(api_client, api_user, live_status):
    make_meeting(api_user, status=live_status, native_meeting_id=MEET_ID)

    body = answer(post_bot(api_client, platform="google_meet", native_meeting_id=MEET_ID), 409)

    assert MEET_ID in body["detail"]
    assert count_meetings(api_user) == 1


def test_a_duplicate_at_the_limit_answers_409_not_403(api_client, api_user):
    api_user.max_concurrent_bots = 1
    api_user.save()
    answer(post_bot(api_client, platform="google_meet", native_meeting_id=MEET_ID), 201)

    answer(post_bot(api_client, platform="google_meet", native_meeting_id=MEET_ID), 409)

    assert count_meetings(api_user) == 1


def test_the_same_meeting_id_on_another_platform_or_of_another_user_is_not_a_duplicate(api_client, api_user):
    make_meeting(make_user(), native_meeting_id="1234567890", platform="teams")
    make_meeting(api_user, native_meeting_id="1234567890", platform="zoom")

    answer(post_bot(api_client, platform="teams", native_meeting_id="1234567890"), 201)


def test_after_the_first_is_stopped_a_new_request_succeeds(api_client, api_user):
    first = answer(post_bot(api_client, platform="google_meet", native_meeting_id=MEET_ID), 201)
    make_session(Meeting.objects.get(pk=first["id"]))  # its bot was launched: the stop goes through `stopping`
    answer(api_client.delete(f"/bots/google_meet/{MEET_ID}"), 202)
    assert Meeting.objects.get(pk=first["id"]).status == MeetingStatus.STOPPING

    second = answer(post_bot(api_client, platform="google_meet", native_meeting_id=MEET_ID), 201)

    assert second["id"] != first["id"]
    assert count_meetings(api_user) == 2


@pytest.mark.parametrize("terminal", [MeetingStatus.COMPLETED, MeetingStatus.FAILED])
def test_after_the_first_ended_a_new_request_succeeds(api_client, api_user, terminal):
    make_meeting(api_user, status=terminal, native_meeting_id=MEET_ID)

    answer(post_bot(api_client, platform="google_meet", native_meeting_id=MEET_ID), 201)


# --- 403 limit ------------------------------------------------------------------------------------
def test_at_the_limit_a_request_answers_403_with_the_limit_and_creates_no_row(api_client, api_user):
    api_user.max_concurrent_bots = 2
    api_user.save()
    make_meeting(api_user, status=MeetingStatus.ACTIVE)
    make_meeting(api_user, status=MeetingStatus.REQUESTED)
    transitions = MeetingTransition.objects.count()

    body = answer(post_bot(api_client, platform="google_meet", native_meeting_id=MEET_ID), 403)

    assert body == {"detail": "User has reached the maximum concurrent bot limit (2)."}
    assert count_meetings(api_user) == 2
    assert not Meeting.objects.filter(native_meeting_id=MEET_ID).exists()
    assert MeetingTransition.objects.count() == transitions


@pytest.mark.parametrize("live_status", sorted(LIVE))
def test_every_live_status_holds_a_seat(api_client, api_user, live_status):
    api_user.max_concurrent_bots = 1
    api_user.save()
    make_meeting(api_user, status=live_status)

    answer(post_bot(api_client, platform="google_meet", native_meeting_id=MEET_ID), 403)


def test_a_stopping_meeting_does_not_hold_a_seat(api_client, api_user):
    api_user.max_concurrent_bots = 1
    api_user.save()
    make_meeting(api_user, status=MeetingStatus.STOPPING)

    answer(post_bot(api_client, platform="google_meet", native_meeting_id=MEET_ID), 201)


def test_ended_meetings_do_not_hold_a_seat(api_client, api_user):
    api_user.max_concurrent_bots = 1
    api_user.save()
    make_meeting(api_user, status=MeetingStatus.COMPLETED)
    make_meeting(api_user, status=MeetingStatus.FAILED)

    answer(post_bot(api_client, platform="google_meet", native_meeting_id=MEET_ID), 201)


def test_other_users_meetings_do_not_count_against_the_limit(api_client, api_user):
    api_user.max_concurrent_bots = 1
    api_user.save()
    other = make_user()
    make_meeting(other, status=MeetingStatus.ACTIVE)

    answer(post_bot(api_client, platform="google_meet", native_meeting_id=MEET_ID), 201)


def test_a_limit_of_zero_means_unlimited(api_client, api_user):
    api_user.max_concurrent_bots = 0
    api_user.save()

    for n in range(6):
        answer(post_bot(api_client, platform="zoom", native_meeting_id=f"12345678{n}"), 201)

    assert Meeting.objects.filter(user=api_user, status=MeetingStatus.REQUESTED).count() == 6


def test_the_limit_is_read_from_the_user_at_request_time(api_client, api_user):
    api_user.max_concurrent_bots = 1
    api_user.save()
    answer(post_bot(api_client, platform="zoom", native_meeting_id="123456789"), 201)
    answer(post_bot(api_client, platform="zoom", native_meeting_id="123456780"), 403)

    api_user.max_concurrent_bots = 2
    api_user.save()
    answer(post_bot(api_client, platform="zoom", native_meeting_id="123456780"), 201)


# --- DELETE /bots/{platform}/{native_meeting_id} --------------------------------------------------
def test_stop_answers_202_with_a_message(api_client, api_user):
    make_meeting(api_user, status=MeetingStatus.ACTIVE, native_meeting_id=MEET_ID)

    body = answer(api_client.delete(f"/bots/google_meet/{MEET_ID}"), 202)

    assert set(body) == {"message"}
    assert body["message"]


def test_stop_without_a_meeting_answers_404(api_client):
    body = answer(api_client.delete(f"/bots/google_meet/{MEET_ID}"), 404)

    assert MEET_ID in body["detail"]


def test_stop_of_another_users_meeting_answers_404_and_leaves_it_alone(api_client):
    theirs = make_meeting(make_user(), status=MeetingStatus.ACTIVE, native_meeting_id=MEET_ID)

    answer(api_client.delete(f"/bots/google_meet/{MEET_ID}"), 404)

    theirs.refresh_from_db()
    assert theirs.status == MeetingStatus.ACTIVE
    assert theirs.stop_requested_at is None


@pytest.mark.parametrize("path", ["/bots/webex/abc-defg-hij", "/bots/GOOGLE_MEET/abc-defg-hij"])
def test_stop_with_an_invalid_platform_answers_422(api_client, path):
    body = answer(api_client.delete(path), 422)

    assert set(body["errors"]) == {"platform"}


@pytest.mark.parametrize("path", ["/bots/google_meet/abc%00defg", "/bots/zoom/" + "9" * 256])
def test_stop_with_a_meeting_id_no_meeting_can_have_answers_422(api_client, path):
    body = answer(api_client.delete(path), 422)

    assert set(body["errors"]) == {"native_meeting_id"}


@pytest.mark.parametrize("path", ["/bots/teams/12345", "/bots/google_meet/ABC-DEFG-HIJ", "/bots/zoom/" + "9" * 255])
def test_stop_with_a_meeting_id_of_the_wrong_format_answers_404(api_client, path):
    answer(api_client.delete(path), 404)


@pytest.mark.parametrize("terminal", [MeetingStatus.COMPLETED, MeetingStatus.FAILED])
def test_stop_when_every_meeting_ended_answers_202_already_and_changes_nothing(api_client, api_user, terminal):
    meeting = make_meeting(api_user, status=terminal, native_meeting_id=MEET_ID)
    transitions = MeetingTransition.objects.filter(meeting=meeting).count()

    body = answer(api_client.delete(f"/bots/google_meet/{MEET_ID}"), 202)

    assert body == {"message": f"Meeting already {terminal}."}
    meeting.refresh_from_db()
    assert meeting.status == terminal
    assert MeetingTransition.objects.filter(meeting=meeting).count() == transitions


def test_stop_of_a_meeting_whose_bot_was_never_launched_completes_it_at_once(api_client, api_user):
    meeting = make_meeting(api_user, native_meeting_id=MEET_ID)
    assert meeting.current_session_id is None and meeting.bot_container_id is None

    answer(api_client.delete(f"/bots/google_meet/{MEET_ID}"), 202)

    meeting.refresh_from_db()
    assert meeting.status == MeetingStatus.COMPLETED
    assert meeting.completion_reason == "stopped"
    assert meeting.data["completion_reason"] == "stopped"
    assert meeting.end_time is not None
    last = meeting.transitions.last()
    assert (last.from_status, last.to_status, last.source, last.applied) == ("requested", "completed", "user", True)


def test_stop_of_a_launched_bot_moves_to_stopping_and_publishes_leave_on_both_channels(
        api_client, api_user, redis_conn, django_capture_on_commit_callbacks):
    meeting = make_meeting(api_user, status=MeetingStatus.ACTIVE, native_meeting_id=MEET_ID)
    session = make_session(meeting)
    uid = str(session.session_uid)
    redis_conn.delete(current_uid_key(meeting.id))
    pubsub = subscribe(redis_conn, meeting_channel(meeting.id), session_channel(uid))

    with django_capture_on_commit_callbacks(execute=True):
        answer(api_client.delete(f"/bots/google_meet/{MEET_ID}"), 202)

    meeting.refresh_from_db()
    assert meeting.status == MeetingStatus.STOPPING
    assert meeting.stop_requested_at is not None
    got = published(pubsub)
    assert set(got) == {meeting_channel(meeting.id), session_channel(uid)}
    for channel, commands in got.items():
        assert len(commands) == 1, channel
        command = commands[0]
        assert set(command) == {"action", "meeting_id", "connection_id", "command_id"}
        assert (command["action"], command["meeting_id"], command["connection_id"]) == ("leave", meeting.id, uid)
    assert got[meeting_channel(meeting.id)][0]["command_id"] == got[session_channel(uid)][0]["command_id"]


def test_stop_routes_leave_to_the_session_named_by_redis(
        api_client, api_user, redis_conn, django_capture_on_commit_callbacks):
    meeting = make_meeting(api_user, status=MeetingStatus.ACTIVE, native_meeting_id=MEET_ID,
                           bot_container_id="container-1")
    session = make_session(meeting)
    uid = str(session.session_uid)
    redis_conn.set(current_uid_key(meeting.id), uid)
    pubsub = subscribe(redis_conn, session_channel(uid))
    try:
        with django_capture_on_commit_callbacks(execute=True):
            answer(api_client.delete(f"/bots/google_meet/{MEET_ID}"), 202)
    finally:
        redis_conn.delete(current_uid_key(meeting.id))

    assert [c["action"] for c in published(pubsub)[session_channel(uid)]] == ["leave"]


def test_a_repeated_stop_while_stopping_re_sends_leave_without_a_new_transition(
        api_client, api_user, redis_conn, django_capture_on_commit_callbacks):
    meeting = make_meeting(api_user, status=MeetingStatus.ACTIVE, native_meeting_id=MEET_ID)
    make_session(meeting)
    redis_conn.delete(current_uid_key(meeting.id))
    answer(api_client.delete(f"/bots/google_meet/{MEET_ID}"), 202)
    transitions = MeetingTransition.objects.filter(meeting=meeting).count()
    pubsub = subscribe(redis_conn, meeting_channel(meeting.id))

    with django_capture_on_commit_callbacks(execute=True):
        answer(api_client.delete(f"/bots/google_meet/{MEET_ID}"), 202)

    assert [c["action"] for c in published(pubsub)[meeting_channel(meeting.id)]] == ["leave"]
    assert MeetingTransition.objects.filter(meeting=meeting).count() == transitions
    meeting.refresh_from_db()
    assert meeting.status == MeetingStatus.STOPPING


def test_stop_stops_every_live_meeting_of_that_platform_and_id_and_no_other(api_client, api_user):
    target = make_meeting(api_user, status=MeetingStatus.ACTIVE, native_meeting_id=MEET_ID)
    make_session(target)
    other_id = make_meeting(api_user, status=MeetingStatus.ACTIVE, native_meeting_id="xyz-abcd-efg")
    same_id_other_platform = make_meeting(api_user, status=MeetingStatus.ACTIVE, platform="zoom",
                                          native_meeting_id="123456789")

    answer(api_client.delete(f"/bots/google_meet/{MEET_ID}"), 202)

    assert Meeting.objects.get(pk=target.pk).status == MeetingStatus.STOPPING
    assert Meeting.objects.get(pk=other_id.pk).status == MeetingStatus.ACTIVE
    assert Meeting.objects.get(pk=same_id_other_platform.pk).status == MeetingStatus.ACTIVE


# --- PUT /bots/{platform}/{native_meeting_id}/config ----------------------------------------------
def test_reconfigure_answers_202_and_publishes_reconfigure_on_both_channels(
        api_client, api_user, redis_conn, django_capture_on_commit_callbacks):
    meeting = make_meeting(api_user, status=MeetingStatus.ACTIVE, native_meeting_id=MEET_ID,
                           data={"language": "en", "task": "transcribe"})
    uid = str(make_session(meeting).session_uid)
    redis_conn.delete(current_uid_key(meeting.id))
    pubsub = subscribe(redis_conn, meeting_channel(meeting.id), session_channel(uid))

    with django_capture_on_commit_callbacks(execute=True):
        body = answer(api_client.put(f"/bots/google_meet/{MEET_ID}/config", {"language": "de"}, format="json"), 202)

    assert set(body) == {"message"}
    got = published(pubsub)
    assert set(got) == {meeting_channel(meeting.id), session_channel(uid)}
    for commands in got.values():
        assert len(commands) == 1
        command = commands[0]
        assert set(command) == {"action", "meeting_id", "uid", "language", "task", "command_id"}
        assert command["action"] == "reconfigure"
        assert (command["meeting_id"], command["uid"], command["language"], command["task"]) == (
            meeting.id, uid, "de", "transcribe")
    meeting.refresh_from_db()
    assert (meeting.data["language"], meeting.data["task"]) == ("de", "transcribe")


def test_reconfigure_with_task_only_keeps_the_language(api_client, api_user):
    meeting = make_meeting(api_user, status=MeetingStatus.ACTIVE, native_meeting_id=MEET_ID,
                           data={"language": "en", "task": "transcribe"})

    answer(api_client.put(f"/bots/google_meet/{MEET_ID}/config", {"task": "translate"}, format="json"), 202)

    meeting.refresh_from_db()
    assert (meeting.data["language"], meeting.data["task"]) == ("en", "translate")


def test_reconfigure_without_a_meeting_answers_404(api_client):
    answer(api_client.put(f"/bots/google_meet/{MEET_ID}/config", {"language": "en"}, format="json"), 404)


def test_reconfigure_of_another_users_meeting_answers_404(api_client):
    make_meeting(make_user(), status=MeetingStatus.ACTIVE, native_meeting_id=MEET_ID)

    answer(api_client.put(f"/bots/google_meet/{MEET_ID}/config", {"language": "en"}, format="json"), 404)


@pytest.mark.parametrize("status", [s for s in MeetingStatus if s != MeetingStatus.ACTIVE])
def test_reconfigure_of_a_meeting_that_is_not_active_answers_409_naming_its_status(api_client, api_user, status):
    meeting = make_meeting(api_user, status=status, native_meeting_id=MEET_ID, data={"language": "en"})

    body = answer(api_client.put(f"/bots/google_meet/{MEET_ID}/config", {"language": "de"}, format="json"), 409)

    assert body == {"detail": f"Meeting found but is not active (status: '{status}')"}
    meeting.refresh_from_db()
    assert meeting.data == {"language": "en"}


@pytest.mark.parametrize("body", [{}, {"language": None}, {"language": None, "task": None}, {"other": "x"}])
def test_reconfigure_without_language_or_task_answers_422(api_client, api_user, body):
    make_meeting(api_user, status=MeetingStatus.ACTIVE, native_meeting_id=MEET_ID)

    response = answer(api_client.put(f"/bots/google_meet/{MEET_ID}/config", body, format="json"), 422)

    assert "language" in response["detail"] and "task" in response["detail"]


def test_reconfigure_with_no_body_at_all_answers_422(api_client, api_user):
    make_meeting(api_user, status=MeetingStatus.ACTIVE, native_meeting_id=MEET_ID)

    answer(api_client.put(f"/bots/google_meet/{MEET_ID}/config"), 422)


def test_reconfigure_with_a_bad_task_answers_422_on_task(api_client, api_user):
    make_meeting(api_user, status=MeetingStatus.ACTIVE, native_meeting_id=MEET_ID)

    body = answer(api_client.put(f"/bots/google_meet/{MEET_ID}/config", {"task": "dance"}, format="json"), 422)

    assert set(body["errors"]) == {"task"}


@pytest.mark.parametrize("path,field", [("/bots/webex/abc-defg-hij/config", "platform"),
                                        ("/bots/zoom/abc%00/config", "native_meeting_id")])
def test_reconfigure_with_an_invalid_path_answers_422(api_client, path, field):
    body = answer(api_client.put(path, {"language": "en"}, format="json"), 422)

    assert set(body["errors"]) == {field}


def test_reconfigure_with_malformed_json_answers_422(api_client, api_user):
    make_meeting(api_user, status=MeetingStatus.ACTIVE, native_meeting_id=MEET_ID)

    answer(api_client.put(f"/bots/google_meet/{MEET_ID}/config", '{"language":', content_type="application/json"), 422)


@pytest.fixture
def redis_down(settings):
    """Redis refuses connections (REDIS_URL at a port nothing listens on) for the test's duration."""
    from common.redis_client import get_redis

    settings.REDIS_URL = "redis://127.0.0.1:1/0"
    get_redis.cache_clear()
    yield
    get_redis.cache_clear()


def test_reconfigure_while_redis_is_unreachable_answers_503_and_changes_nothing(api_client, api_user, redis_down):
    meeting = make_meeting(api_user, status=MeetingStatus.ACTIVE, native_meeting_id=MEET_ID, data={"language": "en"})
    make_session(meeting)

    body = answer(api_client.put(f"/bots/google_meet/{MEET_ID}/config", {"language": "de"}, format="json"), 503)

    assert "retry" in body["detail"]
    meeting.refresh_from_db()
    assert meeting.data == {"language": "en"}


def test_stop_while_redis_is_unreachable_still_answers_202_and_moves_to_stopping(
        api_client, api_user, redis_down, django_capture_on_commit_callbacks):
    meeting = make_meeting(api_user, status=MeetingStatus.ACTIVE, native_meeting_id=MEET_ID)
    make_session(meeting)

    with django_capture_on_commit_callbacks(execute=True):
        answer(api_client.delete(f"/bots/google_meet/{MEET_ID}"), 202)

    meeting.refresh_from_db()
    assert meeting.status == MeetingStatus.STOPPING  # the delayed stop and the sweep take it from here


# --- GET /bots/status -----------------------------------------------------------------------------
class _BrokenBackend:
    name = "broken"

    @classmethod
    def from_settings(cls, settings):
        return cls()

    def list(self):
        raise OrchestratorError("engine unreachable")


class _UnloadableBackend:
    @classmethod
    def from_settings(cls, settings):
        raise OrchestratorError("cannot connect to the engine")


@pytest.fixture
def test_backend(settings, monkeypatch):
    """Registers this module's backends under test names and selects one via ORCHESTRATOR."""
    from orchestrators import registry

    monkeypatch.setitem(registry.BACKENDS, "test-broken", f"{__name__}._BrokenBackend")
    monkeypatch.setitem(registry.BACKENDS, "test-unloadable", f"{__name__}._UnloadableBackend")
    monkeypatch.setitem(registry.BACKENDS, "test-missing", "orchestrators.no_such_module.Backend")
    registry.get_orchestrator.cache_clear()

    def use(name: str) -> None:
        settings.ORCHESTRATOR = name
        registry.get_orchestrator.cache_clear()

    yield use
    registry.get_orchestrator.cache_clear()


def test_running_bots_with_the_process_backend_and_no_bots_is_an_empty_list(api_client, settings, tmp_path):
    from orchestrators import registry

    settings.ORCHESTRATOR = "process"
    settings.RUN_DIR = tmp_path
    registry.get_orchestrator.cache_clear()
    try:
        body = answer(api_client.get("/bots/status"), 200)
    finally:
        registry.get_orchestrator.cache_clear()

    assert body == {"running_bots": []}


@pytest.mark.parametrize("backend", ["test-broken", "test-unloadable", "test-missing"])
def test_running_bots_when_the_backend_fails_answers_503_json(api_client, test_backend, backend):
    test_backend(backend)

    body = answer(api_client.get("/bots/status"), 503)

    assert set(body) == {"detail"}
    assert body["detail"]


@contextlib.contextmanager
def process_bot(settings, tmp_path, meeting, session, name: str):
    """A real process-backend bot (a sleeping Python) labelled for `meeting` and `session`,
    stopped afterwards; yields its container id."""
    from meetings.launching.launch import bot_labels
    from orchestrators import registry
    from orchestrators.base import BotSpec

    settings.ORCHESTRATOR = "process"
    settings.RUN_DIR = tmp_path
    settings.PROCESS_BOT_COMMAND = f"{sys.executable} -c 'import time; time.sleep(60)'"
    registry.get_orchestrator.cache_clear()
    backend = registry.get_orchestrator()
    container_id = backend.start(BotSpec(name=name, config={}, labels=bot_labels(meeting, session)))
    try:
        yield container_id
    finally:
        backend.stop(container_id, timeout=1)
        registry.get_orchestrator.cache_clear()


def test_running_bots_shows_a_real_process_bot_with_the_protocol_fields(api_client, api_user, settings, tmp_path):
    from orchestrators.base import bot_name

    meeting = make_meeting(api_user, status=MeetingStatus.ACTIVE, native_meeting_id=MEET_ID)
    session = make_session(meeting)
    name = bot_name(meeting.id, str(session.session_uid))
    with process_bot(settings, tmp_path, meeting, session, name) as container_id:
        body = answer(api_client.get("/bots/status"), 200)

    [bot] = body["running_bots"]
    assert set(bot) == {"container_id", "container_name", "platform", "native_meeting_id", "status",
                        "normalized_status", "created_at", "labels", "meeting_id_from_name"}
    assert bot["container_id"] == container_id
    assert bot["container_name"] == name
    assert (bot["platform"], bot["native_meeting_id"]) == ("google_meet", MEET_ID)
    assert bot["normalized_status"] in {"Requested", "Starting", "Up"}
    assert bot["meeting_id_from_name"] == str(meeting.id)
    assert bot["labels"]["botmanager.user_id"] == str(api_user.id)
    assert re.match(r"\d{4}-\d\d-\d\dT", bot["created_at"])


# --- Authentication of every user endpoint --------------------------------------------------------
USER_ENDPOINTS = [
    ("post", "/bots"), ("get", "/bots/status"), ("delete", f"/bots/google_meet/{MEET_ID}"),
    ("put", f"/bots/google_meet/{MEET_ID}/config"), ("get", "/meetings"), ("get", "/meetings/1"),
    ("patch", f"/meetings/google_meet/{MEET_ID}"), ("delete", f"/meetings/google_meet/{MEET_ID}"),
    ("put", "/user/webhook"),
]


@pytest.mark.parametrize("method,path", USER_ENDPOINTS)
def test_every_user_endpoint_without_an_api_key_answers_403_json(client, method, path):
    body = answer(getattr(client, method)(path, content_type="application/json"), 403)

    assert body == {"detail": "Missing API token (X-API-Key header)"}


@pytest.mark.parametrize("method,path", USER_ENDPOINTS)
def test_every_user_endpoint_with_an_unknown_api_key_answers_403_json(client, method, path):
    make_token(make_user())

    body = answer(getattr(client, method)(path, content_type="application/json",
                                          headers={"X-API-Key": "bm_unknown"}), 403)

    assert body == {"detail": "Invalid API token"}
