"""The lifecycle metrics users alert on: the time meetings spend in each status (counted
incrementally from the transitions), live meetings the sweep left past their deadline, and the
sweep's decisions by kind."""
from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from meetings import tasks
from meetings.lifecycle import transitions as lifecycle
from meetings.lifecycle.statuses import MeetingStatus, TransitionSource
from meetings.models import Meeting, MeetingTransition
from meetings.stopping import reconcile
from observability import metrics
from tests.factories import make_meeting, make_session
from tests.observability.test_metrics import FakeBackend, scrape, value
from tests.support import lose_queued_tasks

pytestmark = pytest.mark.django_db

S = MeetingStatus
DURATION = "botmanager_meeting_status_duration_seconds"


@pytest.fixture(autouse=True)
def no_leftover_tasks():
    """The sweeps here ask for bot stops on the test broker: none is left for the next test."""
    yield
    lose_queued_tasks()


@pytest.fixture
def settled(settings):
    """Transitions are counted as soon as they are written (no settle time)."""
    settings.METRICS_STATUS_TIME_SETTLE_SECONDS = 0
    return settings


def backdate(meeting: Meeting, seconds_in: dict[str, float]) -> None:
    """Rewrites the meeting's applied transitions' times so that it spent `seconds_in[status]` in
    each status it left, counted from its creation transition."""
    rows = list(MeetingTransition.objects.filter(meeting=meeting, applied=True).order_by("id"))
    at = timezone.now() - timedelta(days=1)
    Meeting.objects.filter(pk=meeting.pk).update(created_at=at)
    MeetingTransition.objects.filter(pk=rows[0].pk).update(created_at=at)
    for row in rows[1:]:
        at += timedelta(seconds=seconds_in[row.from_status])
        MeetingTransition.objects.filter(pk=row.pk).update(created_at=at)


def run_meeting(seconds_in: dict[str, float]) -> Meeting:
    """requested → joining → active → stopping → completed, with the given times in each."""
    meeting = make_meeting()
    session = make_session(meeting)
    lifecycle.transition(meeting.id, S.JOINING, source=TransitionSource.BOT_CALLBACK, session=session)
    lifecycle.transition(meeting.id, S.ACTIVE, source=TransitionSource.BOT_CALLBACK, session=session)
    lifecycle.transition(meeting.id, S.REQUESTED, source=TransitionSource.BOT_CALLBACK, session=session)  # refused
    lifecycle.transition(meeting.id, S.STOPPING, source=TransitionSource.USER)
    lifecycle.transition(meeting.id, S.COMPLETED, source=TransitionSource.GRACE_FINALIZER, completion_reason="stopped")
    backdate(meeting, seconds_in)
    return meeting


# --- Time in each status ----------------------------------------------------------------------------
def test_the_time_spent_in_each_status_is_observed_when_the_meeting_leaves_it(metrics_redis, settled):
    run_meeting({"requested": 3, "joining": 20, "active": 700, "stopping": 4})
    run_meeting({"requested": 2, "joining": 50, "active": 90, "stopping": 8})

    samples = scrape()

    assert value(samples, DURATION + "_count", status="requested") == 2
    assert value(samples, DURATION + "_sum", status="requested") == pytest.approx(5)
    assert value(samples, DURATION + "_bucket", status="joining", le="30.0") == 1
    assert value(samples, DURATION + "_bucket", status="joining", le="60.0") == 2
    assert value(samples, DURATION + "_bucket", status="active", le="600.0") == 1
    assert value(samples, DURATION + "_bucket", status="active", le="1800.0") == 2
    assert value(samples, DURATION + "_sum", status="stopping") == pytest.approx(12)
    assert value(samples, DURATION + "_count", status="awaiting_admission") == 0  # none went through it


def test_a_scrape_counts_only_the_transitions_after_the_last_one_counted(metrics_redis, settled):
    run_meeting({"requested": 3, "joining": 20, "active": 700, "stopping": 4})
    first = scrape()
    second = scrape()  # nothing new: the same figures, not twice them
    run_meeting({"requested": 1, "joining": 1, "active": 1, "stopping": 1})
    third = scrape()

    assert value(first, DURATION + "_count", status="active") == 1
    assert value(second, DURATION + "_count", status="active") == 1
    assert value(third, DURATION + "_count", status="active") == 2
    assert int(metrics_redis.hget(metrics.STATUS_TIME_KEY, "last_id")) == MeetingTransition.objects.latest("id").id


def test_a_long_history_is_caught_up_over_several_scrapes_of_a_bounded_batch(metrics_redis, settled):
    settled.METRICS_STATUS_TIME_BATCH = 4
    for _ in range(3):  # 3 meetings x 5 applied transitions: 15 rows, 12 of them leave a status
        run_meeting({"requested": 1, "joining": 1, "active": 1, "stopping": 1})

    counts = [sum(v for (n, _), v in scrape().items() if n == DURATION + "_count") for _ in range(5)]

    assert counts == [3, 6, 9, 12, 12]


def test_transitions_younger_than_the_settle_time_wait_for_a_later_scrape(metrics_redis, settings):
    settings.METRICS_STATUS_TIME_SETTLE_SECONDS = 3600
    run_meeting({"requested": 3, "joining": 20, "active": 700, "stopping": 4})
    MeetingTransition.objects.filter(to_status=S.COMPLETED).update(created_at=timezone.now())

    samples = scrape()

    assert value(samples, DURATION + "_count", status="active") == 1
    assert value(samples, DURATION + "_count", status="stopping") == 0


def test_a_batch_counted_by_a_concurrent_scrape_is_not_counted_again(metrics_redis, settled):
    run_meeting({"requested": 3, "joining": 20, "active": 700, "stopping": 4})
    after, limit = 0, settled.METRICS_STATUS_TIME_BATCH
    last_id, _ = metrics.status_time_batch(after, limit, timezone.now())
    # Another scrape read the same watermark and added the same batch first.
    metrics.count_status_time()
    added = metrics_redis.eval(metrics._STATUS_TIME_ADD, 1, metrics.STATUS_TIME_KEY, after, last_id,
                               "active|count", 1)

    assert added == 0
    assert value(scrape(), DURATION + "_count", status="active") == 1


# --- Past deadline ---------------------------------------------------------------------------------
def test_live_meetings_past_their_deadline_by_more_than_a_sweep_interval_are_counted(metrics_redis, settings):
    settings.ORPHAN_SWEEP_INTERVAL_SECONDS = 60
    now = timezone.now()
    make_meeting(status=S.ACTIVE, deadline_at=now - timedelta(seconds=90))
    make_meeting(status=S.STOPPING, deadline_at=now - timedelta(seconds=3600))
    make_meeting(status=S.STOPPING, deadline_at=now - timedelta(seconds=30))  # within one interval: not yet
    make_meeting(status=S.JOINING, deadline_at=now + timedelta(seconds=30))
    make_meeting(status=S.FAILED, deadline_at=now - timedelta(seconds=3600))  # ended: never

    samples = scrape()

    name = "botmanager_meetings_past_deadline"
    assert value(samples, name, status="active") == 1
    assert value(samples, name, status="stopping") == 1
    assert value(samples, name, status="joining") == 0
    assert ("botmanager_meetings_past_deadline", frozenset({"status": "failed"}.items())) not in samples


def test_past_deadline_is_zero_once_the_sweep_has_run(metrics_redis, settings, monkeypatch):
    settings.ORPHAN_SWEEP_INTERVAL_SECONDS = 60
    make_meeting(status=S.STOPPING, deadline_at=timezone.now() - timedelta(seconds=600))
    monkeypatch.setattr(reconcile, "get_orchestrator", lambda name=None: FakeBackend(0))
    lose_queued_tasks()
    before = scrape()

    tasks.sweep.apply()

    name = "botmanager_meetings_past_deadline"
    assert value(before, name, status="stopping") == 1
    assert value(scrape(), name, status="stopping") == 0


# --- The sweep's decisions ---------------------------------------------------------------------------
def test_the_sweeps_decisions_are_counted_by_kind(metrics_redis, monkeypatch):
    now = timezone.now()
    over = make_meeting(status=S.COMPLETED, end_time=now, post_meeting_done_at=now)
    make_meeting(deadline_at=now - timedelta(seconds=5))  # requested past its timeout
    make_meeting(status=S.ACTIVE, deadline_at=now - timedelta(seconds=5))  # past the maximum duration
    monkeypatch.setattr(reconcile, "get_orchestrator", lambda name=None: FakeBackend(over.id))
    lose_queued_tasks()

    reconcile.sweep()
    samples = scrape()

    name = "botmanager_sweep_decisions_total"
    assert value(samples, name, decision="deadline_requested") == 1
    assert value(samples, name, decision="deadline_active") == 1
    assert value(samples, name, decision="stop_orphan_bot") == 1
    assert value(samples, name, decision="deadline_joining") == 0
    assert value(samples, name, decision="bot_gone_active") == 0


def test_every_decision_kind_has_its_series_before_any_sweep(metrics_redis):
    samples = scrape()

    kinds = {dict(labels)["decision"] for (n, labels) in samples if n == "botmanager_sweep_decisions_total"}
    assert kinds == set(reconcile.DECISION_KINDS)


def test_a_dry_run_counts_no_decision(metrics_redis, monkeypatch):
    make_meeting(deadline_at=timezone.now() - timedelta(seconds=5))
    monkeypatch.setattr(reconcile, "get_orchestrator", lambda name=None: FakeBackend(0))

    reconcile.sweep(dry_run=True)

    assert value(scrape(), "botmanager_sweep_decisions_total", decision="deadline_requested") == 0


def test_a_sweep_that_cannot_count_its_decisions_still_carries_them_out(settings, monkeypatch):
    from common.redis_client import get_redis

    overdue = make_meeting(deadline_at=timezone.now() - timedelta(seconds=5))
    monkeypatch.setattr(reconcile, "get_orchestrator", lambda name=None: FakeBackend(0))
    settings.REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens there
    get_redis.cache_clear()
    try:
        _plan, summary = reconcile.sweep()
    finally:
        get_redis.cache_clear()

    assert summary.decisions["deadline_requested"] == 1
    assert Meeting.objects.get(pk=overdue.pk).status == S.FAILED
