"""`GET /events`: the user's event log (meetings/events/log.py). Every applied transition, in order,
with the id and body the webhook delivery of the same event has; opaque, stable cursors; one
user's log only."""
from __future__ import annotations

import json
import threading

import pytest
from django.db import connections, transaction
from rest_framework.test import APIClient

from accounts.models import User
from meetings.events import log as events
from meetings.lifecycle import transitions as lifecycle
from meetings.lifecycle.statuses import MeetingStatus, TransitionSource
from meetings.models import Meeting, MeetingTransition
from tests.factories import make_meeting, make_token, make_user
from webhooks.models import WebhookDelivery

S = MeetingStatus
# Committed transactions: the log lists what every reader can see (a test's own open transaction
# would hold its events back, meetings/events/log.py).
pytestmark = pytest.mark.django_db(transaction=True)


def client_for(user) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_X_API_KEY=make_token(user))
    return client


def walk(meeting, *statuses) -> None:
    for status in statuses:
        lifecycle.transition(meeting.pk, status, source=TransitionSource.BOT_CALLBACK)


def listed(client, **params) -> dict:
    response = client.get("/events", params)
    assert response.status_code == 200, response.content
    return response.json()


def changes(body) -> list[tuple[int, str]]:
    return [(e["payload"]["meeting"]["id"], e["payload"]["status_change"]["to"]) for e in body["events"]]


def test_lists_every_applied_transition_of_the_users_meetings_in_the_order_they_happened(api_client, api_user):
    first, second = make_meeting(api_user), make_meeting(api_user)
    walk(first, S.JOINING)
    walk(second, S.JOINING, S.ACTIVE)
    lifecycle.transition(second.pk, S.REQUESTED, source=TransitionSource.BOT_CALLBACK)  # refused: not an event
    walk(first, S.FAILED)

    assert changes(listed(api_client)) == [
        (first.pk, "requested"), (second.pk, "requested"), (first.pk, "joining"), (second.pk, "joining"),
        (second.pk, "active"), (first.pk, "failed")]


def test_an_event_is_the_meeting_as_its_transition_left_it(api_client, api_user):
    meeting = make_meeting(api_user)
    walk(meeting, S.JOINING, S.ACTIVE, S.COMPLETED)

    body = listed(api_client)
    statuses = [(e["payload"]["meeting"]["status"], e["payload"]["status_change"]["to"]) for e in body["events"]]
    assert statuses == [("requested", "requested"), ("joining", "joining"), ("active", "active"),
                        ("completed", "completed")]
    assert body["events"][0]["payload"]["meeting"]["end_time"] is None
    assert body["events"][-1]["payload"]["meeting"]["end_time"] is not None


def test_following_next_cursor_pages_through_every_event_exactly_once(api_client, api_user):
    meeting = make_meeting(api_user)
    walk(meeting, S.JOINING, S.AWAITING_ADMISSION, S.ACTIVE, S.STOPPING, S.COMPLETED)

    seen, cursor = [], None
    for _ in range(4):
        body = listed(api_client, limit=2, **({"after": cursor} if cursor else {}))
        seen += [e["id"] for e in body["events"]]
        cursor = body["next_cursor"]
    assert len(seen) == len(set(seen)) == 6
    assert [e["id"] for e in listed(api_client)["events"]] == seen


def test_at_the_end_of_the_log_the_next_cursor_stays_where_it_is_and_picks_up_later_events(api_client, api_user):
    meeting = make_meeting(api_user)
    end = listed(api_client)["next_cursor"]
    again = listed(api_client, after=end)
    assert again == {"events": [], "next_cursor": end}

    walk(meeting, S.JOINING)
    assert changes(listed(api_client, after=end)) == [(meeting.pk, "joining")]


def test_an_empty_log_gives_a_cursor_from_the_start(api_client, api_user):
    body = listed(api_client)
    assert body["events"] == []
    meeting = make_meeting(api_user)
    assert changes(listed(api_client, after=body["next_cursor"])) == [(meeting.pk, "requested")]


def test_cursors_are_stable_across_requests(api_client, api_user):
    walk(make_meeting(api_user), S.JOINING)
    assert listed(api_client) == listed(api_client)


def test_a_cursor_is_not_the_transition_id_and_cannot_be_forged(api_client, api_user):
    meeting = make_meeting(api_user)
    [record] = MeetingTransition.objects.filter(meeting=meeting)
    [event] = listed(api_client)["events"]
    assert event["cursor"] != str(record.pk)

    for forged in (str(record.pk), event["cursor"][:-1] + ("A" if event["cursor"][-1] != "A" else "B"),
                   event["cursor"].replace(event["cursor"].split(":")[0], "zz", 1)):
        response = api_client.get("/events", {"after": forged})
        assert response.status_code == 422, forged
        assert "cursor" in response.json()["detail"]


def test_another_users_cursor_is_refused(api_client, api_user):
    other = make_user()
    make_meeting(other)
    their_cursor = listed(client_for(other))["next_cursor"]

    response = api_client.get("/events", {"after": their_cursor})
    assert response.status_code == 422
    assert response.json()["detail"].startswith("Invalid request: after: Invalid cursor")


def test_a_user_never_sees_another_users_events(api_client, api_user):
    mine = make_meeting(api_user)
    theirs = make_meeting(make_user())
    walk(theirs, S.JOINING, S.ACTIVE)

    assert changes(listed(api_client)) == [(mine.pk, "requested")]


# '²' and '١' are digits to str.isdigit() but not to int(): they were a 500.
@pytest.mark.parametrize("limit", ["0", "-1", "x", "1.5", "100000", "²", "١", "1²"])
def test_a_bad_limit_is_refused_with_json(api_client, limit, settings):
    settings.EVENTS_PAGE_MAX = 500
    response = api_client.get("/events", {"limit": limit})
    assert response.status_code == 422
    assert response.json()["detail"] == "Invalid request: limit: limit must be a whole number from 1 to 500."


def test_limit_defaults_to_the_setting(api_client, api_user, settings):
    settings.EVENTS_PAGE_DEFAULT = 2
    walk(make_meeting(api_user), S.JOINING, S.ACTIVE)
    assert len(listed(api_client)["events"]) == 2


def test_the_log_needs_an_api_key():
    response = APIClient().get("/events")
    assert response.status_code == 403
    assert response.json()["detail"]


def test_event_ids_and_bodies_are_those_of_the_webhook_deliveries(api_client, api_user):
    User.objects.filter(pk=api_user.pk).update(webhook_url="https://hooks.example.com/botmanager")
    api_user.refresh_from_db()
    meeting = make_meeting(api_user)
    walk(meeting, S.JOINING, S.ACTIVE)

    deliveries = WebhookDelivery.objects.filter(meeting=meeting, event="meeting.status_change").order_by("pk")
    listed_events = listed(api_client)["events"]
    assert [e["id"] for e in listed_events] == [str(d.webhook_id) for d in deliveries]
    assert [e["payload"] for e in listed_events] == [json.loads(d.payload) for d in deliveries]


def test_a_delivery_made_before_ids_were_derived_keeps_its_id_in_the_log(api_client, api_user):
    User.objects.filter(pk=api_user.pk).update(webhook_url="https://hooks.example.com/botmanager")
    api_user.refresh_from_db()
    meeting = make_meeting(api_user)
    delivery = WebhookDelivery.objects.get(meeting=meeting)
    import uuid

    legacy = uuid.uuid4()
    WebhookDelivery.objects.filter(pk=delivery.pk).update(webhook_id=legacy)
    MeetingTransition.objects.filter(meeting=meeting).update(event="")  # recorded before bodies were stored

    [event] = listed(api_client)["events"]
    assert event["id"] == str(legacy)
    assert event["payload"] == json.loads(delivery.payload)


def test_a_transition_recorded_before_bodies_were_stored_is_listed_with_the_meeting_as_it_is(api_client, api_user):
    meeting = make_meeting(api_user)
    [record] = MeetingTransition.objects.filter(meeting=meeting)
    MeetingTransition.objects.filter(pk=record.pk).update(event="")

    [event] = listed(api_client)["events"]
    assert event["id"] == events.event_id(record.pk)
    assert event["payload"]["meeting"]["id"] == meeting.pk
    assert event["payload"]["status_change"]["to"] == "requested"


def test_an_event_waits_while_a_transaction_that_may_precede_it_is_running(api_user, settings):
    """A transaction holding a lower transition id commits after one holding a higher id (which
    even began first): the higher one is not listed before, or a consumer that took its cursor
    would skip the lower one for good."""
    settings.EVENTS_SETTLE_WAIT_SECONDS = 0.3
    client = client_for(api_user)
    slow, fast = make_meeting(api_user), make_meeting(api_user)
    start = listed(client)["next_cursor"]
    fast_locked, slow_written, release = threading.Event(), threading.Event(), threading.Event()

    def in_thread(work):
        def run():
            try:
                work()
            finally:
                connections.close_all()
        thread = threading.Thread(target=run)
        thread.start()
        return thread

    def fast_transition():
        with transaction.atomic():
            Meeting.objects.select_for_update().get(pk=fast.pk)  # its transaction id comes first
            fast_locked.set()
            assert slow_written.wait(10)
            walk(fast, S.JOINING)  # the higher transition id, committed first

    def slow_transition():
        assert fast_locked.wait(10)
        with transaction.atomic():
            walk(slow, S.JOINING)  # the lower transition id
            slow_written.set()
            release.wait(10)

    threads = [in_thread(fast_transition), in_thread(slow_transition)]
    try:
        threads[0].join(10)
        assert MeetingTransition.objects.filter(meeting=fast, to_status=S.JOINING).exists()
        assert listed(client, after=start) == {"events": [], "next_cursor": start}
    finally:
        release.set()
        for thread in threads:
            thread.join(10)

    assert changes(listed(client, after=start)) == [(slow.pk, "joining"), (fast.pk, "joining")]


def test_a_page_stops_before_its_event_bodies_pass_the_byte_cap_and_the_cursor_goes_on_from_there(
        api_client, api_user, settings):
    meeting = make_meeting(api_user, data={"notes": "n" * 3000})
    walk(meeting, S.JOINING, S.ACTIVE, S.STOPPING)
    sizes = [len(e.body.encode()) for e in events.page(api_user.pk, events.START, 10)]
    assert len(sizes) == 4
    settings.EVENTS_PAGE_MAX_BYTES = sizes[0] + sizes[1]

    pages = [listed(api_client)]
    while pages[-1]["events"]:
        pages.append(listed(api_client, after=pages[-1]["next_cursor"]))

    assert changes(pages[0]) == [(meeting.pk, "requested"), (meeting.pk, "joining")]
    assert [change for page in pages for change in changes(page)] == [
        (meeting.pk, "requested"), (meeting.pk, "joining"), (meeting.pk, "active"), (meeting.pk, "stopping")]


def test_a_page_holds_one_event_even_when_it_alone_passes_the_byte_cap(api_client, api_user, settings):
    settings.EVENTS_PAGE_MAX_BYTES = 10
    walk(make_meeting(api_user), S.JOINING)

    first = listed(api_client)
    second = listed(api_client, after=first["next_cursor"])

    assert [to for _id, to in changes(first) + changes(second)] == ["requested", "joining"]
