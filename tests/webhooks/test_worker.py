"""Webhooks through the whole machinery: lifecycle transitions commit their outbox rows, a real
Celery worker (in this process) delivers them to a real HTTP receiver on localhost, retries with
countdown tasks, post-meeting sends the final event once, the redrive job finds lost tasks."""
from __future__ import annotations

import json
import logging
from datetime import timedelta
from functools import partial

import pytest
from django.utils import timezone

from meetings import tasks as meeting_tasks
from meetings.lifecycle import transitions as lifecycle
from meetings.lifecycle.statuses import MeetingStatus, TransitionSource
from tests.waiting import wait_for, wait_worker_idle
from tests.webhooks.conftest import new_meeting, purge_broker, running_worker
from tests.webhooks.receiver import Answer
from tests.webhooks.test_delivery import documented_verify
from webhooks import delivery, tasks
from webhooks.models import WebhookAttempt, WebhookDelivery

S = MeetingStatus
# Deliveries with retries take longer than the default wait.
wait_until = partial(wait_for, timeout=20)
CALLBACK = TransitionSource.BOT_CALLBACK


def all_settled(user) -> bool:
    rows = WebhookDelivery.objects.filter(user=user)
    return rows.exists() and not rows.filter(status="pending").exists()


def run_meeting_to_completion(meeting) -> None:
    for to_status in (S.JOINING, S.ACTIVE, S.STOPPING, S.COMPLETED):
        assert lifecycle.transition(meeting.id, to_status, source=CALLBACK, completion_reason="stopped").applied


def test_retries_on_500_then_succeed(worker, hook_user, receiver):
    receiver.answer(Answer(500, b"down"), Answer(503, b"still down"))

    meeting = new_meeting(hook_user)

    got = receiver.wait_posts(3)
    d = wait_until(lambda: WebhookDelivery.objects.filter(meeting=meeting, status="succeeded").first(),
                   what="the delivery to succeed")
    assert d.attempts == 3
    assert [g.headers["X-Webhook-Attempt"] for g in got] == ["1", "2", "3"]
    assert {g.webhook_id for g in got} == {str(d.webhook_id)}
    assert {g.body for g in got} == {d.payload.encode()}
    verify = documented_verify()
    assert all(verify(hook_user.secret, g.headers, g.body) for g in got)
    # The retries waited for their backoff (base 0.2 s: at least 0.1 s, then 0.2 s).
    assert got[1].at - got[0].at >= 0.1 and got[2].at - got[1].at >= 0.2
    assert list(WebhookAttempt.objects.filter(delivery=d).values_list("response_code", flat=True)) == [500, 503, 200]
    wait_worker_idle()
    assert len(receiver.posts()) == 3


def test_a_receiver_down_for_a_while_still_gets_every_event(worker, hook_user, receiver):
    receiver.down()
    meeting = new_meeting(hook_user)
    run_meeting_to_completion(meeting)

    # Six events (five status changes, then meeting.completed from post-meeting), each tried
    # more than once while nothing listens.
    wait_until(lambda: WebhookDelivery.objects.filter(meeting=meeting).count() == 6, what="six events")
    wait_until(lambda: all(d.attempts >= 2 for d in WebhookDelivery.objects.filter(meeting=meeting)),
               what="failed attempts on every event")
    assert receiver.posts() == []
    receiver.up()  # the same port

    wait_until(lambda: all_settled(hook_user), what="every delivery to settle")
    rows = list(WebhookDelivery.objects.filter(meeting=meeting).order_by("pk"))
    assert {d.status for d in rows} == {"succeeded"}
    got = receiver.posts()
    assert sorted(g.webhook_id for g in got) == sorted(str(d.webhook_id) for d in rows)  # each exactly once
    bodies = [json.loads(g.body) for g in got]
    changes = sorted((b["status_change"]["timestamp"], b["status_change"]["to"]) for b in bodies
                     if b["event"] == "meeting.status_change")
    assert [to for _ts, to in changes] == ["requested", "joining", "active", "stopping", "completed"]
    [final] = [b for b in bodies if b["event"] != "meeting.status_change"]
    assert final["event"] == "meeting.completed" and final["meeting"]["status"] == "completed"
    assert all(verify(hook_user.secret, g.headers, g.body) for verify in [documented_verify()] for g in got)
    assert all("connection refused" in a.error.lower() for a in WebhookAttempt.objects.filter(
        delivery__meeting=meeting, response_code__isnull=True))


def test_duplicate_tasks_send_nothing_twice(worker, hook_user, receiver):
    receiver.default = Answer(200, delay=0.5)
    meeting = new_meeting(hook_user)
    d = WebhookDelivery.objects.get(meeting=meeting)

    for _ in range(3):  # duplicates racing the task enqueued on commit
        tasks.deliver_webhook.delay(d.pk)
    wait_until(lambda: all_settled(hook_user), what="the delivery")
    for _ in range(3):  # and duplicates after the success
        tasks.deliver_webhook.delay(d.pk)
    wait_worker_idle()

    assert len(receiver.posts()) == 1
    d.refresh_from_db()
    assert (d.status, d.attempts) == ("succeeded", 1)


def test_exactly_one_final_event_even_when_post_meeting_runs_again(worker, hook_user, receiver):
    meeting = new_meeting(hook_user, status=S.ACTIVE)
    lifecycle.transition(meeting.id, S.FAILED, source=CALLBACK, failure_stage="active")
    meeting_tasks.post_meeting.delay(meeting.id)
    meeting_tasks.post_meeting.delay(meeting.id)

    wait_until(lambda: [json.loads(g.body)["event"] for g in receiver.posts()].count("meeting.failed") == 1,
               what="meeting.failed")
    wait_worker_idle()
    events = [json.loads(g.body)["event"] for g in receiver.posts()]
    assert sorted(events) == ["meeting.failed", "meeting.status_change", "meeting.status_change"]


@pytest.mark.django_db(transaction=True)
def test_the_redrive_job_re_enqueues_a_delivery_whose_task_was_lost(hook_user, receiver):
    meeting = new_meeting(hook_user)  # its task is enqueued on commit ...
    d = WebhookDelivery.objects.get(meeting=meeting)
    assert purge_broker() >= 1  # ... and lost
    assert delivery.redrive() == 0  # not overdue yet: its task may still be on its way

    with running_worker():
        wait_worker_idle()
        assert receiver.posts() == []  # nothing would ever send it
        WebhookDelivery.objects.filter(pk=d.pk).update(next_attempt_at=timezone.now() - timedelta(minutes=1))
        tasks.redrive.delay()  # what beat runs

        receiver.wait_posts(1)
        wait_until(lambda: WebhookDelivery.objects.get(pk=d.pk).status == "succeeded", what="the delivery")
    assert receiver.posts()[0].webhook_id == str(d.webhook_id)


@pytest.mark.django_db
def test_the_redrive_job_skips_running_and_settled_deliveries(hook_user):
    past = timezone.now() - timedelta(minutes=5)
    lost, running, done = (WebhookDelivery.objects.get(meeting=new_meeting(hook_user)) for _ in range(3))
    WebhookDelivery.objects.filter(pk__in=[lost.pk, running.pk, done.pk]).update(next_attempt_at=past)
    WebhookDelivery.objects.filter(pk=running.pk).update(claimed_until=timezone.now() + timedelta(seconds=30))
    WebhookDelivery.objects.filter(pk=done.pk).update(status="succeeded")

    assert delivery.overdue() == [lost.pk]

    # A running attempt whose lease has run out (its worker died) is overdue too.
    WebhookDelivery.objects.filter(pk=running.pk).update(claimed_until=timezone.now() - timedelta(seconds=1))
    assert sorted(delivery.overdue()) == sorted([lost.pk, running.pk])


def test_the_redrive_job_is_on_the_beat_schedule():
    import celeryconfig
    from botmanager.celery import app

    entry = celeryconfig.beat_schedule["webhooks-redrive"]
    assert entry["task"] == "webhooks.redrive" == tasks.redrive.name
    assert entry["task"] in app.tasks
    assert "webhooks.deliver" in app.tasks


def test_no_secret_in_the_logs_of_a_whole_run(worker, hook_user, receiver, caplog):
    caplog.set_level(logging.DEBUG)
    receiver.answer(Answer(500, b"oops"), 429)
    meeting = new_meeting(hook_user)
    run_meeting_to_completion(meeting)

    wait_until(lambda: WebhookDelivery.objects.filter(meeting=meeting).count() == 6 and all_settled(hook_user),
               what="every delivery")
    wait_worker_idle()  # each task logs its outcome after committing it

    assert "meeting.completed: delivered" in caplog.text  # the worker's logs are captured
    assert "got 500; retry" in caplog.text
    signatures = [g.headers["X-Webhook-Signature"] for g in receiver.posts()]
    for text in [caplog.text] + [r.getMessage() for r in caplog.records]:
        assert hook_user.secret not in text
        assert not any(sig.removeprefix("sha256=") in text for sig in signatures)
