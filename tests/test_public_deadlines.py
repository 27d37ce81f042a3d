"""Every live meeting shows its deadline: `deadline_at` (when the manager acts if neither its bot nor
its user does first) and `deadline_action` (what it then does), in the MeetingResponse of the API,
of the webhook events, and in the Redis status event; both null once the meeting ended."""
from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone as tz

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from meetings.bot_protocol.channels import status_channel
from meetings.payloads import timestamp
from meetings.lifecycle import deadlines
from meetings.lifecycle.statuses import MeetingStatus
from meetings.models import Meeting
from meetings.stopping.reconcile import Finalize, MeetingRow, StartStop, plan
from tests.factories import make_meeting, make_session, make_user
from tests.http import answer
from tests.support import published, subscribe
from webhooks.models import WebhookDelivery

S = MeetingStatus
ACTIONS = {
    S.REQUESTED: "fail: no bot callback",
    S.JOINING: "fail: bot still joining",
    S.AWAITING_ADMISSION: "complete: awaiting_admission_timeout",
    S.ACTIVE: "stop: max_duration",
    S.STOPPING: "finalize: completed/stopped",
}


def listed(api_client, meeting) -> dict:
    return next(m for m in answer(api_client.get("/meetings"), 200)["meetings"] if m["id"] == meeting.id)


@pytest.mark.django_db
@pytest.mark.parametrize("status", list(ACTIONS))
def test_a_live_meeting_shows_its_deadline_and_what_happens_then(api_client, api_user, status):
    deadline = timezone.now() + timedelta(minutes=7)
    meeting = make_meeting(api_user, status=status, deadline_at=deadline)

    shown = listed(api_client, meeting)

    assert (shown["deadline_at"], shown["deadline_action"]) == (timestamp(deadline), ACTIONS[status])


@pytest.mark.django_db
def test_a_stopping_meeting_shows_the_reason_it_will_complete_with(api_client, api_user):
    meeting = make_meeting(api_user, status=S.STOPPING, stop_reason="max_duration",
                           deadline_at=timezone.now() + timedelta(seconds=40))

    assert listed(api_client, meeting)["deadline_action"] == "finalize: completed/max_duration"


@pytest.mark.django_db
@pytest.mark.parametrize("status", [S.COMPLETED, S.FAILED])
def test_an_ended_meeting_has_no_deadline(api_client, api_user, status):
    meeting = make_meeting(api_user, status=status, deadline_at=timezone.now() + timedelta(minutes=5))

    shown = answer(api_client.get(f"/meetings/{meeting.id}"), 200)

    assert (shown["deadline_at"], shown["deadline_action"]) == (None, None)


@pytest.mark.django_db
def test_a_new_request_shows_the_requested_timeout_as_its_deadline(api_client, settings):
    settings.REQUESTED_TIMEOUT_SECONDS = 300
    before = timezone.now()

    body = answer(api_client.post("/bots", {"platform": "google_meet", "native_meeting_id": "abc-defg-hij"},
                                  format="json"), 201)

    deadline = datetime.fromisoformat(body["deadline_at"].replace("Z", "+00:00"))
    assert before + timedelta(seconds=300) <= deadline <= timezone.now() + timedelta(seconds=300)
    assert body["deadline_action"] == "fail: no bot callback"


@pytest.mark.django_db
def test_each_transition_resets_the_deadline_shown_in_its_webhook_event(settings):
    settings.JOINING_TIMEOUT_SECONDS = 600
    meeting = make_meeting(make_user(webhook_url="https://hooks.example.com/bm"), status=S.REQUESTED)
    uid = str(make_session(meeting).session_uid)

    answer(APIClient().post("/bots/internal/callback/joining", {"connection_id": uid}, format="json"), 200)

    joining = Meeting.objects.get(pk=meeting.pk)
    [event] = [json.loads(d.payload) for d in WebhookDelivery.objects.filter(meeting=meeting, transition__isnull=False)
               if json.loads(d.payload)["status_change"]["to"] == "joining"]
    assert event["meeting"]["deadline_at"] == timestamp(joining.deadline_at)
    assert event["meeting"]["deadline_action"] == "fail: bot still joining"
    assert timedelta(seconds=599) < joining.deadline_at - joining.updated_at <= timedelta(seconds=600)


@pytest.mark.django_db
def test_the_webhook_event_of_the_ending_shows_no_deadline():
    meeting = make_meeting(make_user(webhook_url="https://hooks.example.com/bm"), status=S.ACTIVE)
    uid = str(make_session(meeting).session_uid)

    answer(APIClient().post("/bots/internal/callback/exited", {"connection_id": uid, "exit_code": 0},
                            format="json"), 200)

    payloads = [json.loads(d.payload) for d in WebhookDelivery.objects.filter(meeting=meeting)]
    [ending] = [p for p in payloads if p["status_change"]["to"] == "completed"]
    assert (ending["meeting"]["deadline_at"], ending["meeting"]["deadline_action"]) == (None, None)


@pytest.mark.django_db
def test_the_status_event_carries_the_deadline(redis_conn, django_capture_on_commit_callbacks):
    meeting = make_meeting(status=S.JOINING)
    uid = str(make_session(meeting).session_uid)
    pubsub = subscribe(redis_conn, status_channel(meeting.id))

    with django_capture_on_commit_callbacks(execute=True):
        answer(APIClient().post("/bots/internal/callback/started", {"connection_id": uid}, format="json"), 200)

    [event] = published(pubsub)[status_channel(meeting.id)]
    active = Meeting.objects.get(pk=meeting.pk)
    assert event["payload"] == {"status": "active", "deadline_at": timestamp(active.deadline_at),
                                "deadline_action": "stop: max_duration"}


@pytest.mark.parametrize("status", list(ACTIONS))
def test_the_action_shown_is_what_the_sweep_does_at_the_deadline(status):
    now = datetime(2026, 11, 30, 12, 0, tzinfo=tz.utc)
    row = MeetingRow(1, status, now - timedelta(seconds=1), now - timedelta(hours=1), None, "", None, "")

    decided = plan([row], {}, {}, [], now, timedelta(seconds=60))

    [decision] = decided.finalize + decided.start_stop
    verb, outcome = deadlines.action_for(status).split(": ")
    if isinstance(decision, StartStop):
        assert (verb, outcome) == ("stop", decision.completion_reason)
    else:
        assert isinstance(decision, Finalize)
        assert decision.to_status == {"fail": S.FAILED, "complete": S.COMPLETED, "finalize": S.COMPLETED}[verb]
        if decision.to_status == S.COMPLETED:
            assert outcome.split("/")[-1] == decision.completion_reason
