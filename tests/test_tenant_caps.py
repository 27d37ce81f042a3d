"""What one tenant may store or ask for at once: scheduled bots per user, the
items and bytes of a meeting's data, the size of a `GET /meetings` page. Each test is the attack
that an uncapped tenant could make."""
from __future__ import annotations

import json
from datetime import timedelta, timezone as dt_timezone

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from meetings.lifecycle.statuses import MeetingStatus
from meetings.models import Meeting
from tests.factories import make_meeting, make_token, make_user
from tests.http import answer

pytestmark = pytest.mark.django_db


def client_for(user) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_X_API_KEY=make_token(user))
    return client


def schedule(client, native: str):
    join_at = (timezone.now() + timedelta(hours=1)).astimezone(dt_timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    return client.post("/bots", {"platform": "google_meet", "native_meeting_id": native, "join_at": join_at},
                       format="json")


# --- Scheduled bots per user ------------------------------------------------------------------------
def test_scheduling_past_the_users_cap_answers_409_naming_the_cap_and_creates_nothing(api_client, api_user, settings):
    settings.SCHEDULED_BOTS_PER_USER = 3
    for native in ("abc-defg-hia", "abc-defg-hib", "abc-defg-hic"):
        answer(schedule(api_client, native), 201)

    body = answer(schedule(api_client, "abc-defg-hid"), 409)

    assert body["detail"].startswith("User has reached the maximum of scheduled bots (3)")
    assert Meeting.objects.filter(user=api_user).count() == 3


def test_the_scheduled_cap_is_per_user(api_client, settings):
    settings.SCHEDULED_BOTS_PER_USER = 1
    answer(schedule(api_client, "abc-defg-hia"), 201)

    answer(schedule(client_for(make_user()), "abc-defg-hia"), 201)


def test_a_cancelled_scheduled_bot_frees_its_place_under_the_cap(api_client, settings):
    settings.SCHEDULED_BOTS_PER_USER = 1
    answer(schedule(api_client, "abc-defg-hia"), 201)
    answer(api_client.delete("/bots/google_meet/abc-defg-hia"), 202)

    answer(schedule(api_client, "abc-defg-hib"), 201)


def test_the_scheduled_cap_does_not_count_bots_asked_for_now(api_client, api_user, settings):
    settings.SCHEDULED_BOTS_PER_USER = 1
    make_meeting(api_user, native_meeting_id="xyz-wxyz-xyz")  # requested, launched now

    answer(schedule(api_client, "abc-defg-hia"), 201)


# --- Meeting data: items and bytes ------------------------------------------------------------------
def test_meeting_data_with_100k_participants_answers_422_and_changes_nothing(api_client, api_user):
    meeting = make_meeting(api_user, native_meeting_id="abc-defg-hij", data={"bot_name": "b"})
    body = json.dumps({"data": {"participants": ["p"] * 100_000}})

    refused = answer(api_client.patch("/meetings/google_meet/abc-defg-hij", body, content_type="application/json"),
                     422)

    assert "participants" in refused["errors"]["data"]
    assert "1000" in refused["detail"]
    meeting.refresh_from_db()
    assert meeting.data == {"bot_name": "b"}


def test_meeting_languages_over_the_item_cap_answer_422(api_client, api_user):
    make_meeting(api_user, native_meeting_id="abc-defg-hij")

    refused = answer(api_client.patch("/meetings/google_meet/abc-defg-hij",
                                      {"data": {"languages": ["en"] * 1001}}, format="json"), 422)

    assert "languages" in refused["errors"]["data"]


def test_meeting_data_within_the_item_cap_but_over_the_byte_cap_answers_422(api_client, api_user):
    meeting = make_meeting(api_user, native_meeting_id="abc-defg-hij")
    participants = ["x" * 200] * 900  # 900 items (under 1000), ~180 KB of JSON (over 64 KiB)

    refused = answer(api_client.patch("/meetings/google_meet/abc-defg-hij", {"data": {"participants": participants}},
                                      format="json"), 422)

    assert "MEETING_DATA_MAX_BYTES" in refused["errors"]["data"][0]
    meeting.refresh_from_db()
    assert "participants" not in meeting.data


def test_the_byte_cap_counts_the_data_once_merged(api_client, api_user, settings):
    settings.MEETING_DATA_MAX_BYTES = 1000
    meeting = make_meeting(api_user, native_meeting_id="abc-defg-hij")
    answer(api_client.patch("/meetings/google_meet/abc-defg-hij", {"data": {"notes": "n" * 600}}, format="json"), 200)

    answer(api_client.patch("/meetings/google_meet/abc-defg-hij", {"data": {"participants": ["p" * 200] * 3}},
                            format="json"), 422)

    meeting.refresh_from_db()
    assert meeting.data == {"notes": "n" * 600}


def test_the_manager_written_data_does_not_count_against_the_users_bytes(api_client, api_user, settings):
    settings.MEETING_DATA_MAX_BYTES = 1000
    make_meeting(api_user, native_meeting_id="abc-defg-hij", data={"last_error": "e" * 2000})

    answer(api_client.patch("/meetings/google_meet/abc-defg-hij", {"data": {"notes": "n" * 600}}, format="json"), 200)


# --- GET /meetings pages ----------------------------------------------------------------------------
@pytest.fixture
def six_hundred(api_user) -> list[int]:
    """600 ended meetings of the user; their ids newest first."""
    Meeting.objects.bulk_create([
        Meeting(user=api_user, platform="google_meet", native_meeting_id=f"abc-defg-{n:03d}",
                status=MeetingStatus.COMPLETED) for n in range(600)])
    return list(Meeting.objects.filter(user=api_user).order_by("-created_at", "-id").values_list("id", flat=True))


def test_meetings_without_a_limit_lists_a_page_of_the_100_newest(api_client, six_hundred):
    body = answer(api_client.get("/meetings"), 200)

    assert [m["id"] for m in body["meetings"]] == six_hundred[:100]


def test_meetings_with_the_largest_limit_lists_500(api_client, six_hundred):
    body = answer(api_client.get("/meetings?limit=500"), 200)

    assert [m["id"] for m in body["meetings"]] == six_hundred[:500]


def test_meetings_with_a_limit_over_the_largest_answers_422(api_client, six_hundred):
    body = answer(api_client.get("/meetings?limit=501"), 422)

    assert list(body["errors"]) == ["limit"]


def test_meetings_page_on_with_an_offset(api_client, six_hundred):
    body = answer(api_client.get("/meetings?offset=500"), 200)

    assert [m["id"] for m in body["meetings"]] == six_hundred[500:600]


# --- Integer query parameters: digits that are not ASCII ----------------------------------------------
# str.isdigit() is true of '²' and '١', which int() refuses or reads: GET /events?limit=² was a 500.
UNICODE_DIGITS = ["²", "١", "1²", "٣٠"]


@pytest.mark.parametrize("value", UNICODE_DIGITS)
@pytest.mark.parametrize("path,name", [("/meetings", "limit"), ("/meetings", "offset"), ("/events", "limit")])
def test_a_user_api_integer_parameter_with_non_ascii_digits_answers_422(api_client, path, name, value):
    body = answer(api_client.get(path, {name: value}), 422)

    assert list(body["errors"]) == [name]


@pytest.mark.parametrize("value", UNICODE_DIGITS)
@pytest.mark.parametrize("name", ["skip", "limit"])
def test_an_admin_api_integer_parameter_with_non_ascii_digits_answers_422(settings, name, value):
    admin = APIClient()
    admin.credentials(HTTP_X_ADMIN_API_KEY=settings.ADMIN_API_TOKEN)

    body = answer(admin.get("/admin/users", {name: value}), 422)

    assert list(body["errors"]) == [name]
