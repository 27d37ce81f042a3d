"""Retention (common/retention.py, meetings/retention.py, webhooks/retention.py): old ended meetings'
transitions and finished deliveries are deleted in bounded batches within a time budget; the event
log answers 410 for a cursor from before what it still serves; DELETE /meetings/... removes a
meeting's personal data and hides it, keeping what the counts need."""
from __future__ import annotations

import json
import threading
import time
from datetime import timedelta

import pytest
from django.db import connection, connections, transaction
from django.test import Client
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families
from rest_framework.test import APIClient

from common import retention
from meetings import retention as meetings_retention
from meetings.events import log as events
from meetings.lifecycle import transitions as lifecycle
from meetings.lifecycle.statuses import MeetingStatus, TransitionSource
from meetings.models import EventLogHorizon, Meeting, MeetingTransition
from tests.factories import make_meeting, make_token, make_user
from tests.http import answer
from webhooks import retention as webhooks_retention
from webhooks.models import DeliveryStatus, WebhookAttempt, WebhookDelivery

S = MeetingStatus
# The event log lists committed transitions only (meetings/events/log.py).
pytestmark = pytest.mark.django_db(transaction=True)


def days_ago(days: float):
    return timezone.now() - timedelta(days=days)


def ended_meeting(user, *, days: float, status=S.COMPLETED, **fields) -> Meeting:
    """A meeting that went requested → joining → active → `status`, ended `days` ago."""
    meeting = make_meeting(user, **fields)
    for to in (S.JOINING, S.ACTIVE, status):
        lifecycle.transition(meeting.pk, to, source=TransitionSource.BOT_CALLBACK, reason=f"to {to}")
    Meeting.objects.filter(pk=meeting.pk).update(end_time=days_ago(days))
    meeting.refresh_from_db()
    return meeting


def transitions_of(meeting) -> int:
    return MeetingTransition.objects.filter(meeting=meeting).count()


def client_for(user) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_X_API_KEY=make_token(user))
    return client


# --- The transitions purger ------------------------------------------------------------------------
def test_transitions_of_meetings_ended_before_the_retention_period_are_deleted_and_the_meeting_kept(settings):
    settings.RETENTION_TRANSITIONS_DAYS = 90
    user = make_user()
    old = ended_meeting(user, days=91)

    deleted = meetings_retention.purge_transitions(100)

    assert deleted == 4
    assert transitions_of(old) == 0
    kept = Meeting.objects.get(pk=old.pk)
    assert kept.status == S.COMPLETED and kept.history_purged_at is not None


def test_a_late_refused_attempt_on_a_purged_meeting_is_purged_by_the_next_run(settings):
    settings.RETENTION_TRANSITIONS_DAYS = 90
    old = ended_meeting(make_user(), days=91)
    meetings_retention.purge_transitions(100)

    late = lifecycle.transition(old.pk, S.ACTIVE, source=TransitionSource.BOT_CALLBACK, reason="a zombie bot")
    assert late.outcome == lifecycle.Outcome.REFUSED
    assert Meeting.objects.get(pk=old.pk).history_purged_at is None
    meetings_retention.purge_transitions(100)

    assert transitions_of(old) == 0
    assert Meeting.objects.get(pk=old.pk).history_purged_at is not None


def test_transitions_of_meetings_ended_within_the_retention_period_are_kept(settings):
    settings.RETENTION_TRANSITIONS_DAYS = 90
    recent = ended_meeting(make_user(), days=89, status=S.FAILED)

    assert meetings_retention.purge_transitions(100) == 0
    assert transitions_of(recent) == 4


def test_a_live_meeting_is_never_touched_however_old(settings):
    settings.RETENTION_TRANSITIONS_DAYS = 1
    live = make_meeting(make_user())
    lifecycle.transition(live.pk, S.JOINING, source=TransitionSource.BOT_CALLBACK)
    # Even with an (impossible) old end time: only ended meetings are purged.
    Meeting.objects.filter(pk=live.pk).update(created_at=days_ago(30), end_time=days_ago(30))
    MeetingTransition.objects.filter(meeting=live).update(created_at=days_ago(30))

    assert meetings_retention.purge_transitions(100) == 0
    assert transitions_of(live) == 2


def test_a_batch_deletes_at_most_the_batch_size(settings):
    settings.RETENTION_TRANSITIONS_DAYS = 90
    user = make_user()
    first, second = ended_meeting(user, days=100), ended_meeting(user, days=95)

    assert meetings_retention.purge_transitions(3) == 3
    assert transitions_of(first) + transitions_of(second) == 5
    batches = []
    while deleted := meetings_retention.purge_transitions(3):
        batches.append(deleted)
    assert max(batches) <= 3 and sum(batches) == 5
    assert not Meeting.objects.filter(pk__in=[first.pk, second.pk], history_purged_at__isnull=True).exists()


def test_an_open_purge_batch_holds_no_lock_a_live_meetings_transition_needs(settings):
    settings.RETENTION_TRANSITIONS_DAYS = 90
    user = make_user()
    ended_meeting(user, days=100)
    live = make_meeting(user)
    inside, release = threading.Event(), threading.Event()

    def purge_and_hold():
        try:
            with transaction.atomic():  # the batch's transaction, kept open
                meetings_retention.purge_transitions(100)
                inside.set()
                release.wait(30)
        finally:
            connections.close_all()

    holder = threading.Thread(target=purge_and_hold)
    holder.start()
    try:
        assert inside.wait(30)
        with connection.cursor() as cursor:
            cursor.execute("SET lock_timeout = '5s'")  # a lock the batch held would fail this, not wait
        lifecycle.transition(live.pk, S.JOINING, source=TransitionSource.BOT_CALLBACK)
    finally:
        with connection.cursor() as cursor:
            cursor.execute("RESET lock_timeout")
        release.set()
        holder.join()

    assert Meeting.objects.get(pk=live.pk).status == S.JOINING


def test_a_run_goes_through_every_registered_purger_until_none_has_work(settings):
    settings.RETENTION_TRANSITIONS_DAYS = 90
    settings.RETENTION_DELIVERIES_DAYS = 30
    user = make_user()
    ended_meeting(user, days=100)
    ended_meeting(user, days=100)
    delivery(user, status=DeliveryStatus.SUCCEEDED, days=31)

    deleted = retention.run(batch_size=3, budget_seconds=60)

    assert deleted["transitions"] == 8
    assert deleted["deliveries"] == 1


def test_a_run_stops_starting_batches_when_its_time_budget_is_spent(monkeypatch):
    calls = []

    def endless(batch_size: int) -> int:  # a purger that always has more to delete
        calls.append(time.monotonic())
        return batch_size

    monkeypatch.setattr(retention, "PURGERS", {"endless": endless})
    started = time.monotonic()

    deleted = retention.run(batch_size=10, budget_seconds=0.3)

    assert len(calls) > 1 and deleted == {"endless": 10 * len(calls)}
    # No batch started after the budget (give or take the scheduler: a call is timed just after the
    # check, and a loaded machine may pause the process in between).
    assert calls[-1] - calls[0] < 0.3 + 0.2
    assert time.monotonic() - started < 0.3 + 2  # and the run ended with its last batch


def test_a_run_rests_after_each_batch_so_that_deleting_takes_at_most_its_duty_cycle(monkeypatch):
    worked = []

    def slow(batch_size: int) -> int:  # three batches of 50 ms of work, then nothing left
        started = time.monotonic()
        time.sleep(0.05)
        worked.append(time.monotonic() - started)
        return batch_size if len(worked) < 4 else 0

    monkeypatch.setattr(retention, "PURGERS", {"slow": slow})
    started = time.monotonic()

    retention.run(batch_size=10, budget_seconds=60, duty_cycle=0.25)

    # Deleting took at most a quarter of the run: three rests of three times each batch.
    assert time.monotonic() - started >= 4 * sum(worked[:3]) + worked[3]


def test_a_runs_rest_never_outlasts_its_time_budget(monkeypatch):
    monkeypatch.setattr(retention, "PURGERS", {"slow": lambda n: time.sleep(0.2) or n})
    started = time.monotonic()

    retention.run(batch_size=10, budget_seconds=0.3, duty_cycle=0.05)  # would rest 3.8 s per batch

    assert time.monotonic() - started < 0.3 + 0.2 + 1.5


def test_a_run_records_its_figures_for_the_metrics(monkeypatch, redis_conn):
    redis_conn.delete(retention.METRICS_KEY)
    monkeypatch.setattr(retention, "PURGERS", {"some": lambda n: 0})
    retention.run(batch_size=10, budget_seconds=5)

    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(Client().get("/metrics").content.decode())
               for s in family.samples}

    assert samples[("botmanager_retention_rows_deleted_total", (("kind", "some"),))] == 0
    assert samples[("botmanager_retention_last_run_batches", ())] == 1
    assert samples[("botmanager_retention_last_run_finished", ())] == 1
    assert abs(samples[("botmanager_retention_last_run_timestamp_seconds", ())] - time.time()) < 60


def test_the_retention_job_runs_on_the_beat_schedule_every_interval(settings):
    import importlib

    import celeryconfig
    from botmanager.celery import app

    original = settings.RETENTION_INTERVAL_SECONDS
    settings.RETENTION_INTERVAL_SECONDS = 123
    try:
        entry = importlib.reload(celeryconfig).beat_schedule["retention-purge"]
    finally:
        settings.RETENTION_INTERVAL_SECONDS = original
        importlib.reload(celeryconfig)

    assert entry == {"task": "common.retention_purge", "schedule": 123, "options": {"expires": 123}}
    assert app.tasks["common.retention_purge"].declared_queue == "post_meeting"


def test_the_retention_task_runs_the_purgers(settings):
    settings.RETENTION_TRANSITIONS_DAYS = 90
    old = ended_meeting(make_user(), days=100)

    result = retention.purge.apply(throw=True).get()

    assert result["transitions"] == 4
    assert transitions_of(old) == 0


# --- The event log's horizon ----------------------------------------------------------------------
def test_a_cursor_older_than_the_purged_events_answers_410_with_the_oldest_cursor_served(settings):
    settings.RETENTION_TRANSITIONS_DAYS = 90
    user = make_user()
    client = client_for(user)
    old = ended_meeting(user, days=100)
    first_cursor = answer(client.get("/events", {"limit": 1}), 200)["events"][0]["cursor"]
    recent = ended_meeting(user, days=1)
    meetings_retention.purge_transitions(100)

    body = answer(client.get("/events", {"after": first_cursor}), 410)

    assert "oldest_cursor" in body and "cursor" in body["detail"]
    resumed = answer(client.get("/events", {"after": body["oldest_cursor"]}), 200)
    assert {e["payload"]["meeting"]["id"] for e in resumed["events"]} == {recent.pk}
    assert old.pk not in {e["payload"]["meeting"]["id"] for e in resumed["events"]}


def test_without_a_cursor_the_log_starts_at_the_oldest_event_served(settings):
    settings.RETENTION_TRANSITIONS_DAYS = 90
    user = make_user()
    ended_meeting(user, days=100)
    recent = ended_meeting(user, days=1)
    meetings_retention.purge_transitions(100)

    listed = answer(client_for(user).get("/events"), 200)["events"]

    assert [e["payload"]["meeting"]["id"] for e in listed] == [recent.pk] * 4


def test_a_cursor_at_or_after_the_horizon_is_served(settings):
    settings.RETENTION_TRANSITIONS_DAYS = 90
    user = make_user()
    client = client_for(user)
    ended_meeting(user, days=100)
    meetings_retention.purge_transitions(100)
    horizon = EventLogHorizon.objects.get(user=user).position

    body = answer(client.get("/events", {"after": events.cursor(user.pk, horizon)}), 200)

    assert body["events"] == []


def test_the_horizon_is_per_user(settings):
    settings.RETENTION_TRANSITIONS_DAYS = 90
    purged_user, other = make_user(), make_user()
    ended_meeting(purged_user, days=100)
    other_old_cursor = events.cursor(other.pk, 1)
    meetings_retention.purge_transitions(100)

    answer(client_for(other).get("/events", {"after": other_old_cursor}), 200)


def test_the_stream_given_a_cursor_older_than_the_purged_events_answers_410_json(settings):
    settings.RETENTION_TRANSITIONS_DAYS = 90
    user = make_user()
    ended_meeting(user, days=100)
    old_cursor = events.cursor(user.pk, 1)
    meetings_retention.purge_transitions(100)
    client = client_for(user)

    response = client.get("/events/stream", {"after": old_cursor}, HTTP_ACCEPT="text/event-stream")
    by_header = client.get("/events/stream", HTTP_ACCEPT="text/event-stream", HTTP_LAST_EVENT_ID=old_cursor)

    for gone in (response, by_header):
        assert gone.status_code == 410
        assert gone["Content-Type"] == "application/json"
        assert events.position(user.pk, gone.json()["oldest_cursor"]) == EventLogHorizon.objects.get(user=user).position


# --- DELETE /meetings/{platform}/{native_meeting_id} ----------------------------------------------
MEET_ID = "abc-defg-hij"


def test_delete_removes_the_personal_data_of_an_ended_meeting_and_keeps_its_counts():
    user = make_user()
    meeting = ended_meeting(user, days=0, native_meeting_id=MEET_ID,
                            data={"name": "Board", "participants": ["Ann"], "passcode": "x"})
    MeetingTransition.objects.filter(meeting=meeting).update(metadata={"bot_logs": ["Ann joined"]})
    statuses = list(MeetingTransition.objects.filter(meeting=meeting).values_list("to_status", "source", "applied"))

    answer(client_for(user).delete(f"/meetings/google_meet/{MEET_ID}"), 200)

    redacted = Meeting.objects.get(pk=meeting.pk)
    assert redacted.data == {"redacted": True} and redacted.redacted_at is not None
    assert MEET_ID not in redacted.native_meeting_id
    assert (redacted.status, redacted.platform, redacted.start_time, redacted.end_time) == (
        meeting.status, meeting.platform, meeting.start_time, meeting.end_time)
    records = MeetingTransition.objects.filter(meeting=meeting).order_by("id")
    assert list(records.values_list("to_status", "source", "applied")) == statuses
    for record in records:
        assert record.reason == "" and record.metadata == {}
        assert "Board" not in record.event and MEET_ID not in record.event and "Ann" not in record.event


def test_a_deleted_meeting_is_hidden_from_the_users_lists_and_its_events_are_stubbed():
    user = make_user()
    client = client_for(user)
    meeting = ended_meeting(user, days=0, native_meeting_id=MEET_ID, data={"name": "Board"})
    other = ended_meeting(user, days=0)

    answer(client.delete(f"/meetings/google_meet/{MEET_ID}"), 200)

    assert [m["id"] for m in answer(client.get("/meetings"), 200)["meetings"]] == [other.pk]
    answer(client.get(f"/meetings/{meeting.pk}"), 404)
    logged = [e["payload"] for e in answer(client.get("/events"), 200)["events"]
              if e["payload"]["meeting"]["id"] == meeting.pk]
    assert len(logged) == 4
    assert all(p["redacted"] and p["meeting"]["data"] == {"redacted": True}
               and p["meeting"]["native_meeting_id"] is None for p in logged)
    assert [p["status_change"]["to"] for p in logged] == ["requested", "joining", "active", "completed"]


def test_delete_of_a_live_meeting_answers_409_saying_to_stop_it_first():
    user = make_user()
    live = make_meeting(user, status=S.ACTIVE, native_meeting_id=MEET_ID, data={"name": "Board"})

    body = answer(client_for(user).delete(f"/meetings/google_meet/{MEET_ID}"), 409)

    assert "stop it first" in body["detail"]
    assert Meeting.objects.get(pk=live.pk).data == {"name": "Board"}


def test_a_second_delete_answers_200_and_changes_nothing():
    user = make_user()
    client = client_for(user)
    meeting = ended_meeting(user, days=0, native_meeting_id=MEET_ID)
    answer(client.delete(f"/meetings/google_meet/{MEET_ID}"), 200)
    first = Meeting.objects.get(pk=meeting.pk)

    answer(client.delete(f"/meetings/google_meet/{MEET_ID}"), 200)

    assert Meeting.objects.get(pk=meeting.pk).redacted_at == first.redacted_at


def test_delete_of_another_users_deleted_meeting_still_answers_404():
    owner = make_user()
    ended_meeting(owner, days=0, native_meeting_id=MEET_ID)
    answer(client_for(owner).delete(f"/meetings/google_meet/{MEET_ID}"), 200)

    answer(client_for(make_user()).delete(f"/meetings/google_meet/{MEET_ID}"), 404)


# --- Webhook deliveries -------------------------------------------------------------------------
def delivery(user, *, status, days: float, meeting=None, payload=None) -> WebhookDelivery:
    made = WebhookDelivery.objects.create(
        event="meeting.status_change", user=user, meeting=meeting, status=status, give_up_at=timezone.now(),
        payload=payload or json.dumps({"event": "meeting.completed", "meeting": {"id": 1, "data": {}}}),
        last_response_body="ok from the receiver")
    WebhookAttempt.objects.create(delivery=made, number=1, started_at=timezone.now(), outcome="succeeded",
                                  response_body="ok from the receiver")
    WebhookDelivery.objects.filter(pk=made.pk).update(created_at=days_ago(days))
    return made


def test_finished_deliveries_older_than_the_retention_period_are_deleted_with_their_attempts(settings):
    settings.RETENTION_DELIVERIES_DAYS = 30
    user = make_user()
    old = [delivery(user, status=DeliveryStatus.SUCCEEDED, days=31),
           delivery(user, status=DeliveryStatus.FAILED, days=40)]
    pending = delivery(user, status=DeliveryStatus.PENDING, days=40)
    recent = delivery(user, status=DeliveryStatus.SUCCEEDED, days=29)

    assert webhooks_retention.purge_deliveries(100) == 2

    assert set(WebhookDelivery.objects.values_list("pk", flat=True)) == {pending.pk, recent.pk}
    assert not WebhookAttempt.objects.filter(delivery_id__in=[d.pk for d in old]).exists()


def test_a_purged_transitions_delivery_stays_until_its_own_retention(settings):
    settings.RETENTION_TRANSITIONS_DAYS = 90
    user = make_user()
    old = ended_meeting(user, days=100)
    sent = delivery(user, status=DeliveryStatus.SUCCEEDED, days=0, meeting=old)
    WebhookDelivery.objects.filter(pk=sent.pk).update(transition=MeetingTransition.objects.filter(meeting=old).first())

    meetings_retention.purge_transitions(100)

    sent.refresh_from_db()
    assert sent.transition_id is None and sent.meeting_id == old.pk


def test_a_deliveries_batch_deletes_at_most_the_batch_size(settings):
    settings.RETENTION_DELIVERIES_DAYS = 30
    user = make_user()
    for _ in range(3):
        delivery(user, status=DeliveryStatus.SUCCEEDED, days=31)

    assert webhooks_retention.purge_deliveries(2) == 2
    assert WebhookDelivery.objects.count() == 1


def test_deleting_a_meeting_stubs_its_delivery_payloads_and_gives_up_pending_ones():
    user = make_user()
    meeting = ended_meeting(user, days=0, native_meeting_id=MEET_ID, data={"name": "Board"})
    body = json.dumps({"event": "meeting.completed",
                       "meeting": {"id": meeting.pk, "native_meeting_id": MEET_ID, "data": {"name": "Board"}}})
    sent = delivery(user, status=DeliveryStatus.SUCCEEDED, days=0, meeting=meeting, payload=body)
    waiting = delivery(user, status=DeliveryStatus.PENDING, days=0, meeting=meeting, payload=body)

    answer(client_for(user).delete(f"/meetings/google_meet/{MEET_ID}"), 200)

    for made in (sent, waiting):
        made.refresh_from_db()
        assert "Board" not in made.payload and MEET_ID not in made.payload
        assert json.loads(made.payload)["redacted"] is True
        assert made.last_response_body == ""
        assert WebhookAttempt.objects.get(delivery=made).response_body == ""
    assert sent.status == DeliveryStatus.SUCCEEDED
    assert waiting.status == DeliveryStatus.FAILED and "deleted" in waiting.last_error


# --- Idempotency records ----------------------------------------------------------------------
def test_the_retention_run_deletes_expired_idempotency_records():
    import uuid

    from idempotency.models import IdempotencyRecord

    user = make_user()
    now = timezone.now()

    def record(key: str, expires_at) -> IdempotencyRecord:
        return IdempotencyRecord.objects.create(user=user, key=key, endpoint="POST /bots", request_hash="0" * 64,
                                                state="done", lease_token=uuid.uuid4(), lease_until=now,
                                                response_status=201, response_body="{}", created_at=now,
                                                expires_at=expires_at)

    record("expired", now - timedelta(seconds=1))
    kept = record("kept", now + timedelta(hours=1))

    assert retention.run(budget_seconds=60)["idempotency"] == 1
    assert list(IdempotencyRecord.objects.values_list("pk", flat=True)) == [kept.pk]
