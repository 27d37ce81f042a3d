"""The orphan sweep (`reconcile.sweep()`) against real bots of the process backend: deadlines per
status, silent deaths, leftover bots, failing listings, the advisory lock, the size of the planning
phase, the management command, the beat entry, and lost countdown tasks."""
from __future__ import annotations

import importlib
import io
import json
import secrets
from datetime import timedelta

import psycopg2
import pytest
from django.core.management import call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from meetings import tasks
from meetings.lifecycle import transitions as lifecycle
from meetings.lifecycle.statuses import MeetingStatus, TransitionSource
from meetings.models import Meeting, MeetingTransition
from meetings.stopping import flow as stopping, reconcile
from orchestrators import registry
from orchestrators.base import OrchestratorError
from orchestrators.registry import get_orchestrator
from tests.factories import make_meeting
from tests.stop.conftest import lose_queued_tasks, queued_tasks, run_bot_stops, run_task, snapshot
from tests.waiting import wait_for

S = MeetingStatus
pytestmark = pytest.mark.django_db


def ago(seconds: float):
    return timezone.now() - timedelta(seconds=seconds)


def later(seconds: float):
    return timezone.now() + timedelta(seconds=seconds)


def last_applied(meeting_id: int) -> MeetingTransition:
    return MeetingTransition.objects.filter(meeting_id=meeting_id, applied=True).order_by("id").last()


def fake_container() -> str:
    """A well-formed process-backend id that no bot has."""
    return f"proc-{secrets.token_hex(6)}"


# --- Deadlines ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("status,to_status,completion_reason,failure_stage", [
    (S.REQUESTED, S.FAILED, None, "requested"),
    (S.JOINING, S.FAILED, None, "joining"),
    (S.AWAITING_ADMISSION, S.COMPLETED, "awaiting_admission_timeout", None),
    (S.STOPPING, S.COMPLETED, "stopped", None),
])
def test_a_meeting_past_its_deadline_is_ended_for_its_status_and_its_bot_stopped(
        bots, status, to_status, completion_reason, failure_stage):
    meeting = make_meeting(status=status, deadline_at=ago(1))
    container = bots.start(meeting)

    _plan, summary = reconcile.sweep()
    run_bot_stops()

    meeting.refresh_from_db()
    assert (meeting.status, meeting.completion_reason, meeting.failure_stage) == (
        to_status, completion_reason, failure_stage)
    last = last_applied(meeting.id)
    assert (last.from_status, last.source) == (status, TransitionSource.ORPHAN_SWEEP)
    assert "deadline_at" in last.metadata
    wait_for(lambda: not bots.running(container), what="the bot to be gone")  # its supervisor reaps it
    assert summary.finalized == 1


@pytest.mark.django_db(transaction=True)
def test_an_active_meeting_past_its_maximum_duration_goes_through_the_stop_flow_to_max_duration(
        bots, settings, worker):
    settings.BOT_STOP_DELAY_SECONDS = 0.5
    settings.BOT_STOP_GRACE_SECONDS = 0.5
    meeting = make_meeting(status=S.ACTIVE, deadline_at=ago(1))
    container = bots.start(meeting)

    _plan, summary = reconcile.sweep()

    assert summary.stops_requested == 1
    meeting.refresh_from_db()
    assert meeting.status == S.STOPPING
    assert last_applied(meeting.id).source == TransitionSource.ORPHAN_SWEEP
    wait_for(lambda: Meeting.objects.get(pk=meeting.id).status == S.COMPLETED, timeout=20,
             what="the stop flow to complete the meeting")
    meeting.refresh_from_db()
    assert meeting.completion_reason == "max_duration"
    assert not bots.running(container)


def test_a_stopped_meeting_whose_countdown_tasks_were_lost_is_ended_by_the_sweep_after_its_deadline(
        bots, settings, django_capture_on_commit_callbacks):
    settings.BOT_STOP_DELAY_SECONDS = 0.3
    settings.BOT_STOP_GRACE_SECONDS = 0.3
    meeting = make_meeting(status=S.ACTIVE)
    container = bots.start(meeting)
    with django_capture_on_commit_callbacks(execute=True):
        stopping.request_stop(meeting.id, source=TransitionSource.USER, reason="stop requested by user")
    assert len(queued_tasks("meetings.delayed_stop")) == 1
    lose_queued_tasks()  # the countdown task is lost: delayed_stop never runs

    reconcile.sweep()  # before the deadline: the stop flow still has time
    assert Meeting.objects.get(pk=meeting.id).status == S.STOPPING
    assert bots.running(container)

    deadline = Meeting.objects.get(pk=meeting.id).deadline_at
    wait_for(lambda: timezone.now() > deadline, what="the stop deadline to pass")
    reconcile.sweep()
    run_bot_stops()

    meeting.refresh_from_db()
    assert (meeting.status, meeting.completion_reason) == (S.COMPLETED, "stopped")
    assert last_applied(meeting.id).source == TransitionSource.ORPHAN_SWEEP
    assert not bots.running(container)


# --- Gone bots ---------------------------------------------------------------------------------------
def test_an_active_meeting_whose_bot_died_silently_fails_at_active_with_the_exit_code(bots, settings):
    settings.ORPHAN_GRACE_SECONDS = 60
    meeting = make_meeting(status=S.ACTIVE, deadline_at=later(3600))
    bots.start(meeting, "exit", 3)
    Meeting.objects.filter(pk=meeting.pk).update(updated_at=ago(61))

    reconcile.sweep()

    meeting.refresh_from_db()
    assert (meeting.status, meeting.failure_stage) == (S.FAILED, "active")
    last = last_applied(meeting.id)
    assert last.source == TransitionSource.ORPHAN_SWEEP
    assert (last.metadata["container"], last.metadata["exit_code"]) == ("Exited", 3)


def test_a_silent_death_is_judged_only_once_the_orphan_grace_has_passed(bots, settings):
    settings.ORPHAN_GRACE_SECONDS = 60
    meeting = make_meeting(status=S.ACTIVE, deadline_at=later(3600))
    bots.start(meeting, "exit", 3)
    Meeting.objects.filter(pk=meeting.pk).update(updated_at=ago(50))  # its exit callback may still come

    reconcile.sweep()
    assert Meeting.objects.get(pk=meeting.id).status == S.ACTIVE

    Meeting.objects.filter(pk=meeting.pk).update(updated_at=ago(61))
    reconcile.sweep()
    assert Meeting.objects.get(pk=meeting.id).status == S.FAILED


def test_an_active_meeting_whose_bot_vanished_from_the_backend_fails_at_active(bots, settings):
    settings.ORPHAN_GRACE_SECONDS = 60
    meeting = make_meeting(status=S.ACTIVE, deadline_at=later(3600), updated_at=ago(61),
                           bot_container_id=fake_container(), orchestrator="process",
                           bot_instance=get_orchestrator("process").instance_id())

    reconcile.sweep()

    meeting.refresh_from_db()
    assert (meeting.status, meeting.failure_stage) == (S.FAILED, "active")
    assert last_applied(meeting.id).metadata["container"] == "gone"


@pytest.mark.parametrize("status", [S.REQUESTED, S.JOINING, S.AWAITING_ADMISSION, S.ACTIVE, S.STOPPING])
def test_the_running_bot_of_a_live_meeting_is_never_stopped(bots, settings, status):
    settings.ORPHAN_GRACE_SECONDS = 60
    meeting = make_meeting(status=status, deadline_at=later(3600))
    container = bots.start(meeting)
    Meeting.objects.filter(pk=meeting.pk).update(updated_at=ago(3600))  # quiet for an hour
    before = snapshot(meeting.id)

    _plan, summary = reconcile.sweep()

    assert bots.running(container)
    assert bots.record(container).get("stop_requested_at") is None
    assert snapshot(meeting.id) == before
    assert (summary.finalized, summary.stops_requested, summary.containers_stopped) == (0, 0, 0)


# --- Leftover bots -----------------------------------------------------------------------------------
@pytest.mark.parametrize("status", [S.COMPLETED, S.FAILED])
def test_the_running_bot_of_an_ended_meeting_is_stopped_and_removed(bots, status):
    meeting = make_meeting(status=status, end_time=timezone.now())
    container = bots.start(meeting)

    _plan, summary = reconcile.sweep()
    run_bot_stops()

    assert bots.info(container) is None
    assert bots.record(container) is None
    assert summary.containers_stopped == 1


def test_the_exited_bot_of_an_ended_meeting_is_removed(bots):
    meeting = make_meeting(status=S.FAILED, end_time=timezone.now())
    container = bots.start(meeting, "exit", 1)

    reconcile.sweep()
    run_bot_stops()

    assert bots.info(container) is None


def test_a_bot_whose_meeting_does_not_exist_is_stopped_and_removed(bots):
    container = bots.start_orphan(987_654_321)

    _plan, summary = reconcile.sweep()
    run_bot_stops()

    assert bots.info(container) is None
    assert summary.containers_stopped == 1


# --- Failing listings ----------------------------------------------------------------------------------
class BrokenOrchestrator:
    """A backend whose engine cannot be reached: every call raises `error`."""

    name = "broken"
    error: Exception = OrchestratorError("engine unreachable")
    calls: list = []

    @classmethod
    def from_settings(cls, settings):
        return cls()

    def start(self, spec):
        raise self.error

    def instance_id(self):
        return "broken:1"

    def list(self):
        self.calls.append(("list",))
        raise self.error

    def inspect(self, container_id):
        raise self.error

    def terminate(self, container_id):
        self.calls.append(("terminate", container_id))
        raise self.error

    def kill(self, container_id):
        self.calls.append(("kill", container_id))
        raise self.error

    def remove(self, container_id):
        self.calls.append(("remove", container_id))
        raise self.error


@pytest.fixture
def broken_backend(monkeypatch):
    monkeypatch.setitem(registry.BACKENDS, "broken", f"{__name__}.BrokenOrchestrator")
    monkeypatch.setattr(BrokenOrchestrator, "calls", [])
    get_orchestrator.cache_clear()
    yield BrokenOrchestrator
    get_orchestrator.cache_clear()


def on_broken(status: str, **fields) -> Meeting:
    return make_meeting(status=status, orchestrator="broken", bot_container_id=f"b-{secrets.token_hex(3)}",
                        **fields)


def test_a_failing_listing_acts_on_nothing_but_deadlines(bots, broken_backend, settings):
    settings.ORPHAN_GRACE_SECONDS = 60
    quiet = on_broken(S.ACTIVE, deadline_at=later(3600), updated_at=ago(3600))
    overdue = on_broken(S.STOPPING, deadline_at=ago(1))
    ended = on_broken(S.COMPLETED, end_time=timezone.now())
    before = snapshot(quiet.id)

    plan, summary = reconcile.sweep()

    assert snapshot(quiet.id) == before  # its bot may well be running: unknown is not gone
    assert Meeting.objects.get(pk=overdue.id).status == S.COMPLETED
    assert Meeting.objects.get(pk=ended.id).status == S.COMPLETED
    assert plan.unknown_backends == {"broken": "engine unreachable"}
    assert any("broken: listing failed" in e for e in summary.errors)
    # The sweep's only call is the listing; the overdue meeting's bot is handed to the orchestrator
    # queue, whose task retries while the engine is unreachable.
    assert broken_backend.calls == [("list",)]
    assert [t["args"] for t in queued_tasks("meetings.terminate_bot")] == [
        ["broken", overdue.bot_container_id, False, ""]]


def test_a_failing_listing_of_one_backend_does_not_blind_the_sweep_on_another(bots, broken_backend, settings):
    settings.ORPHAN_GRACE_SECONDS = 60
    on_broken(S.ACTIVE, deadline_at=later(3600), updated_at=ago(3600))
    dead = make_meeting(status=S.ACTIVE, deadline_at=later(3600))
    bots.start(dead, "exit", 3)
    Meeting.objects.filter(pk=dead.pk).update(updated_at=ago(61))
    leftover = bots.start_orphan(987_654_321)

    reconcile.sweep()
    run_bot_stops()

    assert Meeting.objects.get(pk=dead.id).status == S.FAILED
    assert bots.info(leftover) is None


def test_a_backend_that_crashes_unexpectedly_still_lets_deadlines_act(bots, broken_backend, monkeypatch, settings):
    monkeypatch.setattr(BrokenOrchestrator, "error", RuntimeError("bug in the backend"))
    quiet = on_broken(S.ACTIVE, deadline_at=later(3600), updated_at=ago(3600))
    overdue = on_broken(S.STOPPING, deadline_at=ago(1))
    dead = make_meeting(status=S.ACTIVE, deadline_at=later(3600))
    bots.start(dead, "exit", 3)
    Meeting.objects.filter(pk=dead.pk).update(updated_at=ago(61))

    _plan, summary = reconcile.sweep()

    assert Meeting.objects.get(pk=quiet.id).status == S.ACTIVE
    assert Meeting.objects.get(pk=overdue.id).status == S.COMPLETED
    assert Meeting.objects.get(pk=dead.id).status == S.FAILED
    assert any("bug in the backend" in e for e in summary.errors)


def test_a_meeting_that_vanishes_during_the_sweep_does_not_keep_it_from_the_others(bots, monkeypatch):
    first = make_meeting(status=S.STOPPING, deadline_at=ago(1))
    second = make_meeting(status=S.STOPPING, deadline_at=ago(1))
    real_make_plan = reconcile.make_plan

    def plan_then_race(now=None):
        p = real_make_plan(now)
        # Meanwhile the bot reports its exit and the user deletes the ended meeting.
        lifecycle.transition(first.id, S.COMPLETED, source=TransitionSource.BOT_CALLBACK, completion_reason="stopped")
        Meeting.objects.filter(pk=first.id).delete()
        return p

    monkeypatch.setattr(reconcile, "make_plan", plan_then_race)

    _plan, summary = reconcile.sweep()

    assert Meeting.objects.get(pk=second.id).status == S.COMPLETED
    assert summary.finalized == 1


# --- One sweep at a time -------------------------------------------------------------------------------
@pytest.fixture
def other_connection():
    """A second database session (another worker, say)."""
    conn = psycopg2.connect(**connection.get_connection_params())
    conn.autocommit = True
    yield conn
    conn.close()


def test_only_one_sweep_runs_at_a_time(bots, other_connection):
    meeting = make_meeting(status=S.STOPPING, deadline_at=ago(1))
    container = bots.start(meeting)
    with other_connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_lock(%s)", [reconcile.SWEEP_LOCK_KEY])

    plan, summary = reconcile.sweep()

    assert summary.skipped is True
    assert plan.finalize == []
    assert Meeting.objects.get(pk=meeting.id).status == S.STOPPING
    assert bots.running(container)


def test_a_sweep_that_fails_releases_the_sweep_lock(bots, monkeypatch, other_connection):
    def crash(now=None):
        raise RuntimeError("planning crashed")

    monkeypatch.setattr(reconcile, "make_plan", crash)
    with pytest.raises(RuntimeError):
        reconcile.sweep()

    with other_connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_lock(%s)", [reconcile.SWEEP_LOCK_KEY])
        assert cursor.fetchone()[0] is True


# --- The planning phase does not grow with the number of meetings ------------------------------------
def _planning_queries() -> tuple[int, reconcile.Plan]:
    with CaptureQueriesContext(connection) as queries:
        p = reconcile.make_plan()
    return len(queries.captured_queries), p


def _add_meetings(bots, n: int) -> None:
    """n live meetings, each with a bot the listing names (one that exited at once: cheap), and as
    many ended meetings whose post-meeting work is pending."""
    statuses = [S.REQUESTED, S.JOINING, S.AWAITING_ADMISSION, S.ACTIVE, S.STOPPING]
    for i in range(n):
        bots.start(make_meeting(status=statuses[i % len(statuses)], deadline_at=later(3600),
                                stop_reason="stopped"), "exit", 0)
        make_meeting(status=S.COMPLETED, end_time=ago(3600))


def test_the_planning_phase_makes_the_same_number_of_queries_for_5_or_50_meetings(bots):
    _add_meetings(bots, 5)
    small, small_plan = _planning_queries()

    _add_meetings(bots, 50 - 5)
    large, large_plan = _planning_queries()

    assert (small_plan.checked, large_plan.checked) == (5, 50)
    assert (len(small_plan.post_meeting), len(large_plan.post_meeting)) == (5, 50)
    assert small == large, (small, large)


# --- The management command ----------------------------------------------------------------------------
def test_sweep_dry_run_prints_its_decisions_and_changes_nothing(bots, settings):
    settings.ORPHAN_GRACE_SECONDS = 60
    overdue = make_meeting(status=S.STOPPING, deadline_at=ago(1))
    overdue_bot = bots.start(overdue)
    dead = make_meeting(status=S.ACTIVE, deadline_at=later(3600))
    bots.start(dead, "exit", 3)
    Meeting.objects.filter(pk=dead.pk).update(updated_at=ago(61))
    too_long = make_meeting(status=S.ACTIVE, deadline_at=ago(1))
    too_long_bot = bots.start(too_long)
    leftover = bots.start_orphan(987_654_321)
    pending = make_meeting(status=S.COMPLETED, end_time=ago(3600))
    meetings = [overdue, dead, too_long, pending]
    before = {m.id: snapshot(m.id) for m in meetings}

    out = io.StringIO()
    call_command("sweep", "--dry-run", stdout=out)

    text = out.getvalue()
    assert f"would finalize meeting {overdue.id}: stopping -> completed (stopped)" in text
    assert f"would finalize meeting {dead.id}: active -> failed (active)" in text
    assert f"would stop meeting {too_long.id} (max_duration)" in text
    assert f"would stop and remove process bot {leftover} (meeting unknown)" in text
    assert f"would re-enqueue post-meeting work for meeting {pending.id}" in text
    assert "checked 3 live meetings (dry run: nothing changed)" in text
    assert {m.id: snapshot(m.id) for m in meetings} == before
    assert all(bots.running(c) for c in (overdue_bot, too_long_bot, leftover))
    assert queued_tasks("meetings.post_meeting") == []


def test_sweep_command_runs_a_sweep_and_prints_its_summary(bots):
    overdue = make_meeting(status=S.STOPPING, deadline_at=ago(1))

    out = io.StringIO()
    call_command("sweep", stdout=out)

    summary = json.loads(out.getvalue())
    assert (summary["checked"], summary["finalized"], summary["skipped"]) == (1, 1, False)
    assert Meeting.objects.get(pk=overdue.id).status == S.COMPLETED


# --- Beat ------------------------------------------------------------------------------------------------
def test_the_beat_schedule_runs_the_sweep_task_every_interval_and_drops_runs_older_than_one(settings):
    import celeryconfig

    original = settings.ORPHAN_SWEEP_INTERVAL_SECONDS
    settings.ORPHAN_SWEEP_INTERVAL_SECONDS = 17
    try:
        entry = importlib.reload(celeryconfig).beat_schedule["orphan-sweep"]
    finally:
        settings.ORPHAN_SWEEP_INTERVAL_SECONDS = original
        importlib.reload(celeryconfig)

    assert entry == {"task": "meetings.sweep", "schedule": 17, "options": {"expires": 17}}
    from botmanager.celery import app

    assert app.conf.beat_schedule["orphan-sweep"]["task"] == "meetings.sweep"
    assert "meetings.sweep" in app.tasks


def test_the_sweep_task_runs_a_sweep(bots):
    overdue = make_meeting(status=S.STOPPING, deadline_at=ago(1))

    result = run_task(tasks.sweep)

    assert result.get()["finalized"] == 1
    assert Meeting.objects.get(pk=overdue.id).status == S.COMPLETED


# --- Repeats -----------------------------------------------------------------------------------------------
def test_sweeping_again_changes_no_meeting_and_the_sweeps_settle(bots, settings):
    settings.ORPHAN_GRACE_SECONDS = 60
    overdue = make_meeting(status=S.STOPPING, deadline_at=ago(1))
    bots.start(overdue)
    dead = make_meeting(status=S.ACTIVE, deadline_at=later(3600))
    bots.start(dead, "exit", 3)
    Meeting.objects.filter(pk=dead.pk).update(updated_at=ago(61))
    live = make_meeting(status=S.ACTIVE, deadline_at=later(3600))
    live_bot = bots.start(live)
    bots.start_orphan(987_654_321)
    reconcile.sweep()
    run_bot_stops()
    after_first = {m.id: snapshot(m.id) for m in (overdue, dead, live)}

    _plan, second = reconcile.sweep()  # removes the bots of the meetings the first sweep ended
    run_bot_stops()
    third_plan, third = reconcile.sweep()

    assert {m.id: snapshot(m.id) for m in (overdue, dead, live)} == after_first
    assert (second.finalized, second.stops_requested) == (0, 0)
    assert (third_plan.finalize, third_plan.start_stop, third_plan.containers) == ([], [], [])
    assert [b.container_id for b in get_orchestrator("process").list()] == [live_bot]


# --- Races and slow bots -----------------------------------------------------------------------------------
def test_a_meeting_that_came_alive_since_the_snapshot_keeps_its_bot(bots, monkeypatch):
    meeting = make_meeting(status=S.REQUESTED, deadline_at=ago(1))  # no callback before the timeout...
    container = bots.start(meeting)
    real_make_plan = reconcile.make_plan

    def plan_then_race(now=None):
        p = real_make_plan(now)
        # ...but its bot reports `started` right after the sweep read the meetings.
        lifecycle.transition(meeting.id, S.ACTIVE, source=TransitionSource.BOT_CALLBACK)
        return p

    monkeypatch.setattr(reconcile, "make_plan", plan_then_race)

    plan, summary = reconcile.sweep()

    instance = get_orchestrator("process").instance_id()
    assert [(f.meeting_id, f.stop_container) for f in plan.finalize] == [(meeting.id, ("process", container, instance))]
    assert Meeting.objects.get(pk=meeting.id).status == S.ACTIVE  # ...refused as the meeting moved on
    assert bots.running(container)  # and its bot, now live, was left alone
    assert summary.finalized == 0


def test_the_sweep_ends_overdue_meetings_without_waiting_for_their_bots_to_stop(bots, settings):
    settings.BOT_STOP_TIMEOUT_SECONDS = 1.5  # each of these bots resists its stop that long
    meetings = [make_meeting(status=S.STOPPING, deadline_at=ago(1)) for _ in range(3)]
    containers = [bots.start(m, "stubborn") for m in meetings]

    started = timezone.now()
    reconcile.sweep()
    took = (timezone.now() - started).total_seconds()

    for m in meetings:
        m.refresh_from_db()
        assert m.status == S.COMPLETED
        assert (m.end_time - started).total_seconds() < 1.0, "an ending waited for another meeting's bot"
    assert took < 1.0, "the sweep waited for the bots"
    # The bots were asked on the orchestrator queue: SIGTERM now, SIGKILL after the stop timeout.
    assert sorted(t["args"][1] for t in queued_tasks("meetings.terminate_bot")) == sorted(containers)
    run_bot_stops()
    assert not any(bots.running(c) for c in containers)
