"""`/meetings`: list, detail with transitions, data patch, deletion (protocol.md "User API").
Real PostgreSQL; every response is JSON, never a 500."""
from __future__ import annotations

import pytest

from meetings.lifecycle import transitions as lifecycle
from meetings.lifecycle.statuses import NON_TERMINAL, MeetingStatus, TransitionSource
from meetings.models import Meeting, MeetingTransition
from tests.factories import make_meeting, make_session, make_user
from tests.http import answer

pytestmark = pytest.mark.django_db

MEETING_FIELDS = {"id", "user_id", "platform", "native_meeting_id", "constructed_meeting_url", "status",
                  "bot_container_id", "start_time", "end_time", "data", "created_at", "updated_at",
                  "deadline_at", "deadline_action"}
TRANSITION_FIELDS = {"from", "to", "source", "reason", "completion_reason", "failure_stage", "applied", "created_at"}
MEET_ID = "abc-defg-hij"
BOT = TransitionSource.BOT_CALLBACK


# --- GET /meetings --------------------------------------------------------------------------------
def test_list_without_meetings_is_an_empty_list(api_client):
    assert answer(api_client.get("/meetings"), 200) == {"meetings": []}


def test_list_shows_only_the_users_own_meetings_newest_first(api_client, api_user):
    mine = [make_meeting(api_user, native_meeting_id=f"abc-defg-{n}{n}{n}") for n in range(3)]
    make_meeting(make_user())

    body = answer(api_client.get("/meetings"), 200)

    assert [m["id"] for m in body["meetings"]] == [m.id for m in reversed(mine)]
    for item in body["meetings"]:
        assert set(item) == MEETING_FIELDS
        assert item["user_id"] == api_user.id


def test_list_shows_each_meetings_current_status(api_client, api_user):
    meeting = make_meeting(api_user)
    lifecycle.transition(meeting.id, MeetingStatus.ACTIVE, source=BOT)

    [item] = answer(api_client.get("/meetings"), 200)["meetings"]

    assert item["status"] == "active"
    assert item["start_time"] is not None


# --- GET /meetings?limit=&offset=&status=&platform= (as Vexa 0.10) ----------------------------------
@pytest.fixture
def five(api_user):
    """Five meetings of the user, oldest first: zoom, teams and google_meet, two of them active."""
    meetings = [
        make_meeting(api_user, platform="zoom", native_meeting_id="123456789"),
        make_meeting(api_user, platform="teams", native_meeting_id="1234567890", status=MeetingStatus.ACTIVE),
        make_meeting(api_user, native_meeting_id="abc-defg-hij"),
        make_meeting(api_user, platform="zoom", native_meeting_id="987654321", status=MeetingStatus.ACTIVE),
        make_meeting(api_user, native_meeting_id="xyz-wxyz-xyz", status=MeetingStatus.COMPLETED),
    ]
    make_meeting(make_user(), status=MeetingStatus.ACTIVE)  # another user's
    return [m.id for m in meetings]


def _ids(api_client, query: str) -> list[int]:
    return [m["id"] for m in answer(api_client.get(f"/meetings?{query}"), 200)["meetings"]]


def test_list_without_parameters_is_every_meeting_newest_first(api_client, five):
    assert _ids(api_client, "") == five[::-1]


def test_list_with_a_limit_gives_the_newest_ones(api_client, five):
    assert _ids(api_client, "limit=2") == [five[4], five[3]]


def test_list_with_an_offset_skips_the_newest_ones(api_client, five):
    assert _ids(api_client, "offset=3") == [five[1], five[0]]


def test_list_with_a_limit_and_an_offset_gives_one_page(api_client, five):
    assert _ids(api_client, "limit=2&offset=1") == [five[3], five[2]]


def test_list_with_an_offset_past_the_end_is_empty(api_client, five):
    assert _ids(api_client, "offset=5") == []


def test_list_with_a_status_gives_only_meetings_in_that_status(api_client, five):
    assert _ids(api_client, "status=active") == [five[3], five[1]]


def test_list_with_a_platform_gives_only_meetings_on_that_platform(api_client, five):
    assert _ids(api_client, "platform=zoom") == [five[3], five[0]]


def test_list_filters_combine_before_the_page_is_cut(api_client, five):
    assert _ids(api_client, "platform=zoom&status=active") == [five[3]]
    assert _ids(api_client, "status=active&limit=1&offset=1") == [five[1]]


def test_list_ignores_unknown_parameters(api_client, five):
    assert _ids(api_client, "page=2&sort=asc") == five[::-1]


@pytest.mark.parametrize("query,field", [
    ("limit=0", "limit"), ("limit=501", "limit"), ("limit=²", "limit"), ("limit=-1", "limit"), ("limit=ten", "limit"),
    ("limit=", "limit"), ("offset=-1", "offset"), ("offset=x", "offset"), (f"offset={2**63}", "offset"),
    ("status=stuck", "status"), ("status=", "status"), ("status=ACTIVE", "status"),
    ("platform=skype", "platform"), ("platform=", "platform"),
])
def test_list_with_an_invalid_parameter_answers_422_naming_it(api_client, five, query, field):
    body = answer(api_client.get(f"/meetings?{query}"), 422)

    assert list(body["errors"]) == [field]
    assert body["detail"].startswith(f"Invalid request: {field}: ")


def test_list_with_the_largest_limit_and_offset_answers(api_client, five):
    assert _ids(api_client, f"limit=500&offset={2**63 - 1}") == []


# --- GET /meetings/{id} ---------------------------------------------------------------------------
def test_detail_lists_the_transitions_oldest_first_with_their_fields(api_client, api_user):
    meeting = make_meeting(api_user)
    for status in (MeetingStatus.JOINING, MeetingStatus.ACTIVE, MeetingStatus.STOPPING):
        lifecycle.transition(meeting.id, status, source=BOT, reason=f"to {status}")
    lifecycle.transition(meeting.id, MeetingStatus.JOINING, source=BOT, reason="late joining")  # refused
    lifecycle.transition(meeting.id, MeetingStatus.COMPLETED, source=TransitionSource.GRACE_FINALIZER,
                         completion_reason="stopped")

    body = answer(api_client.get(f"/meetings/{meeting.id}"), 200)

    assert set(body) == MEETING_FIELDS | {"transitions"}
    assert body["status"] == "completed"
    transitions = body["transitions"]
    for record in transitions:
        assert set(record) == TRANSITION_FIELDS
    assert [(t["from"], t["to"], t["applied"]) for t in transitions] == [
        (None, "requested", True), ("requested", "joining", True), ("joining", "active", True),
        ("active", "stopping", True), ("stopping", "joining", False), ("stopping", "completed", True)]
    assert [t["source"] for t in transitions] == ["user", "bot_callback", "bot_callback", "bot_callback",
                                                  "bot_callback", "grace_finalizer"]
    assert transitions[1]["reason"] == "to joining"
    assert transitions[-1]["completion_reason"] == "stopped"
    assert transitions[-1]["failure_stage"] is None
    created = [t["created_at"] for t in transitions]
    assert created == sorted(created)


def test_detail_of_a_failed_meeting_shows_the_failure_stage_on_its_transition(api_client, api_user):
    meeting = make_meeting(api_user, status=MeetingStatus.AWAITING_ADMISSION)
    lifecycle.transition(meeting.id, MeetingStatus.FAILED, source=BOT)

    body = answer(api_client.get(f"/meetings/{meeting.id}"), 200)

    assert body["transitions"][-1]["failure_stage"] == "awaiting_admission"
    assert body["transitions"][-1]["completion_reason"] is None
    assert body["data"]["failure_stage"] == "awaiting_admission"


def test_detail_of_another_users_meeting_answers_404(api_client):
    theirs = make_meeting(make_user())

    body = answer(api_client.get(f"/meetings/{theirs.id}"), 404)

    assert str(theirs.id) in body["detail"]


@pytest.mark.parametrize("meeting_id", ["0", "987654321", "99999999999999999999999"])
def test_detail_of_an_unknown_meeting_answers_404(api_client, meeting_id):
    answer(api_client.get(f"/meetings/{meeting_id}"), 404)


def test_detail_with_a_non_numeric_id_answers_404_json(api_client):
    answer(api_client.get("/meetings/abc"), 404)


# --- PATCH /meetings/{platform}/{native_meeting_id} -----------------------------------------------
def patch(client, body, platform="google_meet", native_id=MEET_ID):
    return client.patch(f"/meetings/{platform}/{native_id}", body, format="json")


def test_patch_merges_the_fields_into_the_newest_meetings_data(api_client, api_user):
    older = make_meeting(api_user, status=MeetingStatus.COMPLETED, native_meeting_id=MEET_ID, data={"bot_name": "old"})
    newest = make_meeting(api_user, status=MeetingStatus.ACTIVE, native_meeting_id=MEET_ID,
                          data={"bot_name": "Rec", "language": "en"})
    changes = {"name": "Weekly sync", "participants": ["Ann", "Bob"], "languages": ["en", "fr"], "notes": "agenda"}

    body = answer(patch(api_client, {"data": changes}), 200)

    assert set(body) == MEETING_FIELDS
    assert body["id"] == newest.id
    assert body["data"] == {"bot_name": "Rec", "language": "en", **changes}
    newest.refresh_from_db()
    older.refresh_from_db()
    assert newest.data == {"bot_name": "Rec", "language": "en", **changes}
    assert older.data == {"bot_name": "old"}


def test_patch_keeps_the_fields_it_does_not_name(api_client, api_user):
    make_meeting(api_user, native_meeting_id=MEET_ID)
    answer(patch(api_client, {"data": {"name": "First", "notes": "a"}}), 200)

    body = answer(patch(api_client, {"data": {"notes": "b"}}), 200)

    assert body["data"] == {"name": "First", "notes": "b"}


def test_patch_does_not_change_the_status(api_client, api_user):
    meeting = make_meeting(api_user, status=MeetingStatus.ACTIVE, native_meeting_id=MEET_ID)
    transitions = MeetingTransition.objects.filter(meeting=meeting).count()

    answer(patch(api_client, {"data": {"name": "n"}}), 200)

    meeting.refresh_from_db()
    assert meeting.status == MeetingStatus.ACTIVE
    assert MeetingTransition.objects.filter(meeting=meeting).count() == transitions


@pytest.mark.parametrize("data", [{"bogus": 1}, {"name": "ok", "status": "completed"}, {"passcode": "x"}])
def test_patch_with_an_unknown_key_answers_422_and_changes_nothing(api_client, api_user, data):
    meeting = make_meeting(api_user, native_meeting_id=MEET_ID, data={"bot_name": "Rec"})

    body = answer(patch(api_client, {"data": data}), 422)

    assert set(body["errors"]) == {"data"}
    assert "Unknown field" in body["detail"]
    meeting.refresh_from_db()
    assert meeting.data == {"bot_name": "Rec"}


@pytest.mark.parametrize("body,field", [
    ({}, "data"),
    ({"data": "name"}, "data"),
    ({"data": None}, "data"),
    ({"data": {"participants": "Ann"}}, "data"),
    ({"data": {"languages": [["en"]]}}, "data"),
    ({"data": {"name": "x" * 501}}, "data"),
    ({"data": {"notes": "a\u0000b"}}, "data"),
])
def test_patch_with_an_invalid_body_answers_422(api_client, api_user, body, field):
    make_meeting(api_user, native_meeting_id=MEET_ID)

    response = answer(patch(api_client, body), 422)

    assert field in response["errors"]


@pytest.mark.parametrize("raw", ["[]", "null", '{"data": '])
def test_patch_with_a_body_that_is_not_a_json_object_answers_422(api_client, api_user, raw):
    make_meeting(api_user, native_meeting_id=MEET_ID)

    answer(api_client.patch(f"/meetings/google_meet/{MEET_ID}", raw, content_type="application/json"), 422)


def test_patch_without_a_meeting_answers_404(api_client):
    answer(patch(api_client, {"data": {"name": "n"}}), 404)


def test_patch_of_another_users_meeting_answers_404_and_changes_nothing(api_client):
    theirs = make_meeting(make_user(), native_meeting_id=MEET_ID, data={})

    answer(patch(api_client, {"data": {"name": "n"}}), 404)

    theirs.refresh_from_db()
    assert theirs.data == {}


@pytest.mark.parametrize("platform,native_id,field", [("webex", MEET_ID, "platform"),
                                                      ("zoom", "12%0034567", "native_meeting_id")])
def test_patch_with_an_invalid_path_answers_422(api_client, platform, native_id, field):
    body = answer(patch(api_client, {"data": {"name": "n"}}, platform=platform, native_id=native_id), 422)

    assert set(body["errors"]) == {field}


# --- DELETE /meetings/{platform}/{native_meeting_id} ----------------------------------------------
@pytest.mark.parametrize("status", sorted(NON_TERMINAL))
def test_delete_of_a_meeting_that_has_not_ended_answers_409_and_keeps_it(api_client, api_user, status):
    meeting = make_meeting(api_user, status=status, native_meeting_id=MEET_ID)

    body = answer(api_client.delete(f"/meetings/google_meet/{MEET_ID}"), 409)

    assert status in body["detail"]
    assert Meeting.objects.filter(pk=meeting.pk).exists()


def test_delete_with_one_ended_and_one_live_meeting_answers_409_and_deletes_neither(api_client, api_user):
    ended = make_meeting(api_user, status=MeetingStatus.COMPLETED, native_meeting_id=MEET_ID)
    live = make_meeting(api_user, status=MeetingStatus.ACTIVE, native_meeting_id=MEET_ID)

    answer(api_client.delete(f"/meetings/google_meet/{MEET_ID}"), 409)

    assert Meeting.objects.filter(pk__in=[ended.pk, live.pk]).count() == 2


def test_delete_without_a_meeting_answers_404(api_client):
    answer(api_client.delete(f"/meetings/google_meet/{MEET_ID}"), 404)


def test_delete_of_another_users_meeting_answers_404_and_keeps_it(api_client):
    theirs = make_meeting(make_user(), status=MeetingStatus.COMPLETED, native_meeting_id=MEET_ID)

    answer(api_client.delete(f"/meetings/google_meet/{MEET_ID}"), 404)

    assert Meeting.objects.filter(pk=theirs.pk).exists()


def test_delete_of_ended_meetings_answers_200_and_hides_them_keeping_only_what_the_counts_need(api_client, api_user):
    completed = make_meeting(api_user, status=MeetingStatus.COMPLETED, native_meeting_id=MEET_ID,
                             data={"name": "Board meeting"})
    failed = make_meeting(api_user, status=MeetingStatus.FAILED, native_meeting_id=MEET_ID)
    make_session(failed)
    kept = make_meeting(api_user, status=MeetingStatus.COMPLETED, native_meeting_id="xyz-abcd-efg")

    body = answer(api_client.delete(f"/meetings/google_meet/{MEET_ID}"), 200)

    assert set(body) == {"message"}
    assert "2" in body["message"]
    assert [m["id"] for m in answer(api_client.get("/meetings"), 200)["meetings"]] == [kept.id]
    redacted = Meeting.objects.get(pk=completed.pk)
    assert (redacted.status, redacted.platform, redacted.data) == (MeetingStatus.COMPLETED, "google_meet",
                                                                   {"redacted": True})
    assert MEET_ID not in redacted.native_meeting_id
    assert MeetingTransition.objects.filter(meeting_id__in=[completed.pk, failed.pk]).exists()


def test_delete_twice_answers_200_the_second_time_too(api_client, api_user):
    make_meeting(api_user, status=MeetingStatus.COMPLETED, native_meeting_id=MEET_ID)
    answer(api_client.delete(f"/meetings/google_meet/{MEET_ID}"), 200)

    body = answer(api_client.delete(f"/meetings/google_meet/{MEET_ID}"), 200)

    assert "already deleted" in body["message"]


@pytest.mark.parametrize("path,field", [("/meetings/webex/abc-defg-hij", "platform"),
                                        ("/meetings/teams/abc%00", "native_meeting_id")])
def test_delete_with_an_invalid_path_answers_422(api_client, path, field):
    body = answer(api_client.delete(path), 422)

    assert set(body["errors"]) == {field}


@pytest.mark.parametrize("method,path", [("post", "/meetings"), ("put", f"/meetings/google_meet/{MEET_ID}"),
                                         ("delete", "/meetings/1"), ("get", f"/meetings/google_meet/{MEET_ID}")])
def test_an_unsupported_method_answers_405_json(api_client, method, path):
    answer(getattr(api_client, method)(path), 405)
