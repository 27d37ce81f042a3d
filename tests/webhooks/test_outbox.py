"""The outbox: one row per event, written in the transaction of the transition that caused it
(protocol.md "Webhooks"), and one final event per meeting from the post-meeting step."""
from __future__ import annotations

import json
import threading

import pytest
from django.db import connections, transaction

from meetings.api.serializers import MeetingSerializer
from meetings.lifecycle import transitions as lifecycle
from meetings.lifecycle.statuses import MeetingStatus, TransitionSource
from meetings.models import Meeting, MeetingTransition
from meetings.stopping import post_meeting
from tests.factories import make_user
from tests.webhooks.conftest import delivery_queue, new_meeting, purge_broker
from webhooks import outbox
from webhooks.models import DeliveryStatus, WebhookDelivery

S = MeetingStatus
pytestmark = pytest.mark.django_db


def events(meeting) -> list[dict]:
    return [json.loads(d.payload) for d in WebhookDelivery.objects.filter(meeting=meeting).order_by("pk")]


def test_creating_a_meeting_records_its_first_status_change(hook_user):
    meeting = new_meeting(hook_user)

    [delivery] = WebhookDelivery.objects.filter(meeting=meeting)
    first = MeetingTransition.objects.get(meeting=meeting)
    body = json.loads(delivery.payload)
    assert delivery.event == "meeting.status_change"
    assert delivery.transition == first
    assert delivery.user == hook_user
    assert (delivery.status, delivery.attempts) == (DeliveryStatus.PENDING, 0)
    assert body["event"] == "meeting.status_change"
    assert body["status_change"]["from"] is None
    assert body["status_change"]["to"] == "requested"
    assert body["status_change"]["source"] == "user"
    assert body["status_change"]["reason"] == "bot requested"
    assert body["meeting"]["id"] == meeting.id
    assert body["meeting"]["status"] == "requested"


def test_every_applied_transition_records_one_status_change_with_the_protocol_shape(hook_user):
    meeting = new_meeting(hook_user)
    for to_status in (S.JOINING, S.ACTIVE, S.STOPPING, S.COMPLETED):
        lifecycle.transition(meeting.id, to_status, source=TransitionSource.BOT_CALLBACK, reason=f"to {to_status}",
                             completion_reason="stopped")

    bodies = events(meeting)
    assert [(b["status_change"]["from"], b["status_change"]["to"]) for b in bodies] == [
        (None, "requested"), ("requested", "joining"), ("joining", "active"), ("active", "stopping"),
        ("stopping", "completed")]
    last = bodies[-1]
    assert set(last) == {"event", "meeting", "status_change"}
    assert set(last["status_change"]) == {"from", "to", "reason", "source", "timestamp"}
    assert last["status_change"]["reason"] == "to completed"
    assert last["status_change"]["source"] == "bot_callback"
    record = MeetingTransition.objects.filter(meeting=meeting).last()
    assert last["status_change"]["timestamp"] == record.created_at.isoformat().replace("+00:00", "Z")
    meeting.refresh_from_db()
    # The meeting as the API shows it, at the time of the event.
    assert last["meeting"] == json.loads(json.dumps(MeetingSerializer(meeting).data))
    assert last["meeting"]["status"] == "completed"
    assert last["meeting"]["data"]["completion_reason"] == "stopped"
    assert bodies[2]["meeting"]["status"] == "active"
    assert WebhookDelivery.objects.filter(meeting=meeting, transition__isnull=True).count() == 0


def test_refused_and_repeated_transitions_record_nothing(hook_user):
    meeting = new_meeting(hook_user, status=S.ACTIVE)
    before = WebhookDelivery.objects.count()

    assert lifecycle.transition(meeting.id, S.ACTIVE, source=TransitionSource.USER).outcome is lifecycle.Outcome.NOOP
    assert lifecycle.transition(meeting.id, S.JOINING, source=TransitionSource.USER).outcome \
        is lifecycle.Outcome.REFUSED

    assert WebhookDelivery.objects.count() == before


def test_a_user_without_a_webhook_gets_no_rows():
    meeting = new_meeting(make_user())
    lifecycle.transition(meeting.id, S.FAILED, source=TransitionSource.USER)
    post_meeting.run(meeting.id)

    assert not WebhookDelivery.objects.filter(meeting=meeting).exists()


class Boom(Exception):
    pass


def test_a_rolled_back_transition_leaves_no_row(hook_user):
    meeting = new_meeting(hook_user)
    before = WebhookDelivery.objects.count()

    with pytest.raises(Boom):
        with transaction.atomic():
            result = lifecycle.transition(meeting.id, S.JOINING, source=TransitionSource.BOT_CALLBACK)
            assert result.applied
            assert WebhookDelivery.objects.filter(transition=result.record).exists()  # written in it
            raise Boom

    meeting.refresh_from_db()
    assert meeting.status == S.REQUESTED
    assert WebhookDelivery.objects.count() == before


@pytest.mark.django_db(transaction=True)
def test_the_row_commits_with_the_transition_and_not_before(hook_user):
    """Seen from another connection: neither the transition nor its event exists before the
    commit, both exist after it."""
    meeting = new_meeting(hook_user)

    def seen() -> tuple[str, int]:
        out = {}

        def look():
            try:
                out["status"] = Meeting.objects.get(pk=meeting.pk).status
                out["rows"] = WebhookDelivery.objects.filter(meeting_id=meeting.pk).count()
            finally:
                connections.close_all()

        t = threading.Thread(target=look)
        t.start()
        t.join()
        return out["status"], out["rows"]

    with transaction.atomic():
        lifecycle.transition(meeting.id, S.JOINING, source=TransitionSource.BOT_CALLBACK)
        assert WebhookDelivery.objects.filter(meeting=meeting).count() == 2
        assert seen() == ("requested", 1)
    assert seen() == ("joining", 2)


@pytest.mark.parametrize("terminal,event", [(S.COMPLETED, "meeting.completed"), (S.FAILED, "meeting.failed")])
def test_post_meeting_records_exactly_one_final_event_even_when_run_twice(hook_user, terminal, event):
    meeting = new_meeting(hook_user, status=S.ACTIVE)
    lifecycle.transition(meeting.id, terminal, source=TransitionSource.BOT_CALLBACK, completion_reason="stopped",
                         failure_stage="active")

    assert post_meeting.run(meeting.id) is True
    assert post_meeting.run(meeting.id) is False
    outbox.record_final(Meeting.objects.get(pk=meeting.pk))  # even called again directly

    finals = WebhookDelivery.objects.filter(meeting=meeting).exclude(event="meeting.status_change")
    assert [d.event for d in finals] == [event]
    body = json.loads(finals[0].payload)
    assert set(body) == {"event", "meeting"}
    assert body["event"] == event
    assert body["meeting"]["status"] == terminal
    assert body["meeting"]["end_time"] is not None


def test_the_final_event_step_is_registered_in_the_post_meeting_registry():
    assert outbox.record_final in post_meeting.STEPS


def test_no_final_event_for_a_meeting_that_has_not_ended(hook_user):
    meeting = new_meeting(hook_user, status=S.ACTIVE)

    assert outbox.record_final(meeting) is None
    assert post_meeting.run(meeting.id) is False
    assert not WebhookDelivery.objects.filter(meeting=meeting).exclude(event="meeting.status_change").exists()


def test_deleting_an_ended_meeting_keeps_its_deliveries(hook_user):
    meeting = new_meeting(hook_user)
    lifecycle.transition(meeting.id, S.FAILED, source=TransitionSource.USER)
    post_meeting.run(meeting.id)
    ids = list(WebhookDelivery.objects.filter(meeting=meeting).values_list("pk", flat=True))
    assert len(ids) == 3

    Meeting.objects.filter(pk=meeting.pk).delete()

    kept = WebhookDelivery.objects.filter(pk__in=ids)
    assert kept.count() == 3
    assert {d.status for d in kept} == {DeliveryStatus.PENDING}
    assert {json.loads(d.payload)["meeting"]["id"] for d in kept} == {meeting.id}


def test_the_delivery_task_is_enqueued_on_commit_and_not_before(hook_user, django_capture_on_commit_callbacks):
    purge_broker()
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        meeting = new_meeting(hook_user)
    [delivery] = WebhookDelivery.objects.filter(meeting=meeting)
    assert queued_deliveries() == []  # nothing leaves before the commit

    for callback in callbacks:  # what the commit runs
        callback()

    assert queued_deliveries() == [delivery.pk]
    purge_broker()


def queued_deliveries() -> list[int]:
    """Delivery ids of the webhooks.deliver tasks waiting in the test broker."""
    import redis

    from botmanager.celery import app

    client = redis.Redis.from_url(app.conf.broker_url)
    try:
        messages = [json.loads(raw) for raw in client.lrange(delivery_queue(), 0, -1)]
    finally:
        client.close()
    return [int(m["headers"]["argsrepr"].strip("(),")) for m in messages
            if m["headers"]["task"] == "webhooks.deliver"]
