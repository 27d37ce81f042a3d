"""`/metrics`: every family is exposed with the values the data implies (computed from the database
on scrape, sweep events from Redis, callback latency from the web process)."""
from __future__ import annotations

from datetime import timedelta

import pytest
from django.apps import apps
from django.test import Client
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from meetings import tasks
from meetings.lifecycle import transitions as lifecycle
from meetings.lifecycle.statuses import MeetingStatus, TransitionSource
from meetings.models import Meeting
from meetings.stopping import reconcile
from orchestrators.base import LABEL_MEETING_ID, BotInfo, NormalizedStatus
from tests.factories import make_meeting, make_session, make_user
from tests.support import lose_queued_tasks, queued_tasks

pytestmark = pytest.mark.django_db

S = MeetingStatus


def scrape(client=None, **headers) -> dict:
    """{(sample name, frozenset(labels)): value} of one scrape."""
    response = (client or Client()).get("/metrics", headers=headers)
    assert response.status_code == 200, response.content
    assert response["Content-Type"].startswith("text/plain; version=")
    samples = {}
    for family in text_string_to_metric_families(response.content.decode()):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: dict, name: str, **labels) -> float:
    return samples[(name, frozenset(labels.items()))]


def test_meetings_by_status(metrics_redis):
    user = make_user()
    for status, n in {S.REQUESTED: 2, S.ACTIVE: 1, S.STOPPING: 1, S.COMPLETED: 3, S.FAILED: 1}.items():
        for _ in range(n):
            make_meeting(user, status=status)

    samples = scrape()

    expected = {"requested": 2, "joining": 0, "awaiting_admission": 0, "active": 1, "stopping": 1,
                "completed": 3, "failed": 1}
    for status, n in expected.items():
        assert value(samples, "botmanager_meetings", status=status) == n


def test_transitions_by_source_target_and_applied(metrics_redis):
    meeting = make_meeting()  # requested by user
    session = make_session(meeting)
    lifecycle.transition(meeting.id, S.JOINING, source=TransitionSource.BOT_CALLBACK, session=session)
    lifecycle.transition(meeting.id, S.ACTIVE, source=TransitionSource.BOT_CALLBACK, session=session)
    # Refused: active -> joining is not in the table.
    lifecycle.transition(meeting.id, S.JOINING, source=TransitionSource.BOT_CALLBACK, session=session)
    lifecycle.transition(meeting.id, S.STOPPING, source=TransitionSource.USER)
    lifecycle.transition(meeting.id, S.COMPLETED, source=TransitionSource.GRACE_FINALIZER, completion_reason="stopped")

    samples = scrape()

    name = "botmanager_meeting_transitions_total"
    assert value(samples, name, source="user", to_status="requested", applied="true") == 1
    assert value(samples, name, source="bot_callback", to_status="joining", applied="true") == 1
    assert value(samples, name, source="bot_callback", to_status="joining", applied="false") == 1
    assert value(samples, name, source="bot_callback", to_status="active", applied="true") == 1
    assert value(samples, name, source="user", to_status="stopping", applied="true") == 1
    assert value(samples, name, source="grace_finalizer", to_status="completed", applied="true") == 1
    assert sum(v for (n, _), v in samples.items() if n == name) == 6


def test_stop_to_terminal_histogram(metrics_redis):
    now = timezone.now()
    for seconds in (0.5, 3, 41, 700):
        meeting = make_meeting(status=S.COMPLETED)
        Meeting.objects.filter(pk=meeting.pk).update(stop_requested_at=now - timedelta(seconds=seconds),
                                                     end_time=now, post_meeting_done_at=now)
    make_meeting(status=S.STOPPING, stop_requested_at=now)  # not terminal yet: not counted
    make_meeting(status=S.FAILED, end_time=now)  # never stopped: not counted

    samples = scrape()

    name = "botmanager_stop_to_terminal_seconds"
    assert value(samples, name + "_count") == 4
    assert value(samples, name + "_sum") == pytest.approx(744.5, abs=0.01)
    assert value(samples, name + "_bucket", le="1.0") == 1
    assert value(samples, name + "_bucket", le="5.0") == 2
    assert value(samples, name + "_bucket", le="40.0") == 2
    assert value(samples, name + "_bucket", le="45.0") == 3
    assert value(samples, name + "_bucket", le="600.0") == 3
    assert value(samples, name + "_bucket", le="+Inf") == 4


class FakeBackend:
    """One running bot whose meeting is over: the sweep must stop it."""

    name = "process"

    def __init__(self, meeting_id: int):
        self.bots = [BotInfo("c-orphan", "botmanager-bot-x", NormalizedStatus.UP, "running",
                             {LABEL_MEETING_ID: str(meeting_id)})]

    def instance_id(self):
        return "fake:1"

    def list(self):
        return list(self.bots)


def test_sweep_runs_what_they_finalized_and_orphan_containers_stopped(metrics_redis, monkeypatch):
    now = timezone.now()
    over = make_meeting(status=S.COMPLETED, end_time=now, post_meeting_done_at=now)
    overdue = make_meeting(deadline_at=now - timedelta(seconds=5))  # requested past its timeout
    backend = FakeBackend(over.id)
    monkeypatch.setattr(reconcile, "get_orchestrator", lambda name=None: backend)
    lose_queued_tasks()

    before = scrape()
    tasks.sweep.apply()  # the task, with its Celery signals, as a worker runs it
    tasks.sweep.apply()
    after = scrape()

    # Still listed by the fake on the 2nd pass: asked to stop twice, on the orchestrator queue.
    assert [t["args"] for t in queued_tasks("meetings.terminate_bot")] == [["process", "c-orphan", True, "fake:1"]] * 2
    assert Meeting.objects.get(pk=overdue.pk).status == S.FAILED
    assert value(before, "botmanager_sweep_runs_total", outcome="completed") == 0
    assert value(after, "botmanager_sweep_runs_total", outcome="completed") == 2
    assert value(after, "botmanager_sweep_runs_total", outcome="skipped") == 0
    assert value(after, "botmanager_orphan_containers_stopped_total") == 2
    assert value(after, "botmanager_sweep_finalized_meetings_total", to_status="failed") == 1
    assert value(after, "botmanager_sweep_finalized_meetings_total", to_status="completed") == 0
    assert value(after, "botmanager_meeting_transitions_total", source="orphan_sweep", to_status="failed",
                 applied="true") == 1
    assert value(after, "botmanager_sweep_last_checked_meetings") == 0  # the 2nd pass: nothing live left
    assert value(after, "botmanager_sweep_last_success_timestamp_seconds") == pytest.approx(now.timestamp(), abs=60)
    assert 0 < value(after, "botmanager_sweep_last_duration_seconds") < 30


def test_a_failed_sweep_task_is_counted(metrics_redis, monkeypatch):
    def boom():
        raise RuntimeError("database went away")

    monkeypatch.setattr(reconcile, "sweep", boom)
    tasks.sweep.apply()

    assert value(scrape(), "botmanager_sweep_runs_total", outcome="failed") == 1


def test_callback_latency_histogram_counts_each_callback_by_name_and_code(metrics_redis):
    meeting = make_meeting()
    uid = str(make_session(meeting).session_uid)
    client = Client()
    name = "botmanager_callback_duration_seconds"
    before = scrape()

    def count(samples, callback, code):
        return samples.get((name + "_count", frozenset({"callback": callback, "code": code}.items())), 0)

    assert client.post("/bots/internal/callback/joining", {"connection_id": uid},
                       content_type="application/json").status_code == 200
    assert client.post("/bots/internal/callback/started", {"connection_id": uid},
                       content_type="application/json").status_code == 200
    assert client.post("/bots/internal/callback/joining", {"connection_id": "not-a-session"},
                       content_type="application/json").status_code == 404
    assert client.post("/bots/internal/callback/bogus", {}, content_type="application/json").status_code == 404
    after = scrape()

    assert count(after, "joining", "200") - count(before, "joining", "200") == 1
    assert count(after, "started", "200") - count(before, "started", "200") == 1
    assert count(after, "joining", "404") - count(before, "joining", "404") == 1
    assert count(after, "unknown", "404") - count(before, "unknown", "404") == 1
    inf = (name + "_bucket", frozenset({"callback": "joining", "code": "200", "le": "+Inf"}.items()))
    assert after[inf] == count(after, "joining", "200")
    # Other requests are not timed as callbacks.
    assert Client().get("/healthz").status_code == 200
    assert sum(v for (n, _), v in scrape().items() if n == name + "_count") == \
        sum(v for (n, _), v in after.items() if n == name + "_count")


@pytest.mark.skipif(not apps.is_installed("webhooks"), reason="the webhooks app is not installed")
def test_webhook_deliveries_by_status_and_attempts_by_outcome(metrics_redis):
    from webhooks.models import WebhookAttempt, WebhookDelivery

    user = make_user()
    now = timezone.now()
    deliveries = []
    for status in ("pending", "succeeded", "succeeded", "failed"):
        deliveries.append(WebhookDelivery.objects.create(event="meeting.status_change", user=user, payload="{}",
                                                         status=status, give_up_at=now))
    for n, outcome in enumerate(("retry", "retry", "succeeded"), start=1):
        WebhookAttempt.objects.create(delivery=deliveries[1], number=n, started_at=now, outcome=outcome)

    samples = scrape()

    assert value(samples, "botmanager_webhook_deliveries", status="pending") == 1
    assert value(samples, "botmanager_webhook_deliveries", status="succeeded") == 2
    assert value(samples, "botmanager_webhook_deliveries", status="failed") == 1
    assert value(samples, "botmanager_webhook_attempts_total", outcome="retry") == 2
    assert value(samples, "botmanager_webhook_attempts_total", outcome="succeeded") == 1


def test_every_collector_reports_up(metrics_redis):
    samples = scrape()
    collectors = {dict(labels)["collector"]: v for (n, labels), v in samples.items()
                  if n == "botmanager_metrics_collector_up"}
    expected = {"meetings", "transitions", "stops", "instances", "deadlines", "status_time", "redis", "queues",
                "retention"} \
        | ({"webhooks"} if apps.is_installed("webhooks") else set())
    assert collectors == {name: 1 for name in expected}


def test_a_redis_outage_costs_only_the_redis_families(settings):
    from common.redis_client import get_redis

    settings.REDIS_URL = "redis://127.0.0.1:1/0"
    get_redis.cache_clear()
    try:
        samples = scrape()
    finally:
        get_redis.cache_clear()
    assert value(samples, "botmanager_metrics_collector_up", collector="redis") == 0
    assert value(samples, "botmanager_metrics_collector_up", collector="meetings") == 1
    assert ("botmanager_sweep_runs_total", frozenset({"outcome": "completed"}.items())) not in samples
    assert value(samples, "botmanager_meetings", status="requested") == 0


def test_metrics_token_guards_the_endpoint_when_set(metrics_redis, settings):
    settings.METRICS_TOKEN = "scrape-secret"
    assert Client().get("/metrics").status_code == 403
    assert Client().get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 403
    assert "botmanager_meetings" in {n for n, _ in scrape(Authorization="Bearer scrape-secret")}


# --- Queues and lateness -------------------------------------------------------------------------------
def test_queue_depth_and_the_age_of_the_oldest_waiting_task_come_from_the_broker(metrics_redis):
    import time

    lose_queued_tasks()
    meeting = make_meeting(status=S.COMPLETED)
    tasks.delayed_stop.delay(meeting.id)  # no worker here: both wait in the lifecycle queue
    tasks.finalize_after_stop.delay(meeting.id)
    tasks.post_meeting.delay(meeting.id)
    tasks.terminate_bot.delay("process", "proc-000000000000")
    time.sleep(0.3)

    samples = scrape()
    lose_queued_tasks()

    assert value(samples, "botmanager_queue_depth", queue="lifecycle") == 2
    assert value(samples, "botmanager_queue_depth", queue="orchestrator") == 1
    assert value(samples, "botmanager_queue_depth", queue="post_meeting") == 1
    assert value(samples, "botmanager_queue_depth", queue="sweep") == 0
    assert 0.3 <= value(samples, "botmanager_queue_oldest_task_age_seconds", queue="lifecycle") < 30
    assert value(samples, "botmanager_queue_oldest_task_age_seconds", queue="sweep") == 0


def test_how_late_a_timed_task_started_is_counted_against_its_eta(metrics_redis):
    from types import SimpleNamespace

    from observability import metrics

    late = SimpleNamespace(name="meetings.finalize_after_stop",
                           request=SimpleNamespace(eta=(timezone.now() - timedelta(seconds=3)).isoformat()))
    on_time = SimpleNamespace(name="meetings.sweep", request=SimpleNamespace(
        eta=None, **{metrics.SENT_AT_HEADER: timezone.now().timestamp() - 0.05}))

    metrics._on_task_started(task=late)
    metrics._on_task_started(task=on_time)
    samples = scrape()

    name = "botmanager_task_lateness_seconds"
    assert value(samples, name + "_count", task="meetings.finalize_after_stop") == 1
    assert value(samples, name + "_bucket", task="meetings.finalize_after_stop", le="2.0") == 0
    assert value(samples, name + "_bucket", task="meetings.finalize_after_stop", le="5.0") == 1
    assert value(samples, name + "_bucket", task="meetings.sweep", le="0.1") == 1
    assert value(samples, name + "_count", task="meetings.kill_bot") == 0


def test_every_sweep_counter_is_a_field_of_the_sweep_summary():
    from observability.metrics import SWEEP_SUMMARY_COUNTERS

    assert set(SWEEP_SUMMARY_COUNTERS) <= set(reconcile.Summary().as_dict())
