"""The stop flow: DELETE /bots/... → `stopping` → delayed_stop (after BOT_STOP_DELAY_SECONDS) →
finalize_after_stop (BOT_STOP_GRACE_SECONDS after the forced stop). Real PostgreSQL, Redis, Celery
and bot processes of the process backend."""
from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from common.queues import instance_queue
from meetings import tasks
from meetings.launching import launch
from meetings.lifecycle.statuses import MeetingStatus, TransitionSource
from meetings.models import Meeting, MeetingTransition
from meetings.stopping import flow as stopping
from orchestrators.base import BotSpec
from tests.factories import make_meeting, make_session
from tests.stop.conftest import queued_tasks, run_bot_stops, run_task, snapshot
from tests.waiting import wait_for

S = MeetingStatus
MEET_ID = "abc-defg-hij"


def stop_by_user(meeting_id: int, capture) -> None:
    """The user's stop, with its after-commit effects (leave, delayed_stop enqueue) run."""
    with capture(execute=True):
        stopping.request_stop(meeting_id, source=TransitionSource.USER, reason="stop requested by user")


def applied(meeting_id: int) -> list[MeetingTransition]:
    return list(MeetingTransition.objects.filter(meeting_id=meeting_id, applied=True).order_by("id"))


# --- The stop request ------------------------------------------------------------------------------
@pytest.mark.django_db
def test_delete_puts_a_meeting_with_a_bot_in_stopping_with_the_stop_deadline(api_client, api_user, bots, settings):
    settings.BOT_STOP_DELAY_SECONDS = 30
    settings.BOT_STOP_GRACE_SECONDS = 10
    meeting = make_meeting(api_user, status=S.ACTIVE, native_meeting_id=MEET_ID)
    bots.start(meeting)

    before = timezone.now()
    response = api_client.delete(f"/bots/google_meet/{MEET_ID}")
    after = timezone.now()

    assert response.status_code == 202, response.content
    meeting.refresh_from_db()
    assert meeting.status == S.STOPPING
    assert before <= meeting.stop_requested_at <= after
    assert meeting.deadline_at == meeting.stop_requested_at + timedelta(seconds=30 + 10)
    last = applied(meeting.id)[-1]
    assert (last.from_status, last.to_status, last.source) == (S.ACTIVE, S.STOPPING, TransitionSource.USER)


@pytest.mark.django_db(transaction=True)
def test_the_delayed_stop_stops_the_bot_once_the_stop_delay_has_passed(api_client, api_user, bots, settings,
                                                                       worker):
    settings.BOT_STOP_DELAY_SECONDS = 1.5
    settings.BOT_STOP_GRACE_SECONDS = 60  # keep the finalizer out of the picture
    meeting = make_meeting(api_user, status=S.ACTIVE, native_meeting_id=MEET_ID)
    container = bots.start(meeting)  # does not listen to Redis: only the delayed stop can end it

    assert api_client.delete(f"/bots/google_meet/{MEET_ID}").status_code == 202

    meeting.refresh_from_db()
    record = wait_for(lambda: (r := bots.record(container)) and r.get("stop_requested_at") and r,
                      timeout=15, what="the delayed stop to stop the bot")
    waited = (datetime.fromisoformat(record["stop_requested_at"]) - meeting.stop_requested_at).total_seconds()
    assert 1.5 <= waited < 1.5 + 2.0, waited
    wait_for(lambda: not bots.running(container), what="the bot to be gone")
    meeting.refresh_from_db()
    assert meeting.status == S.STOPPING  # the grace has not passed yet


@pytest.mark.django_db(transaction=True)
def test_the_finalizer_completes_the_meeting_at_its_stop_deadline_a_grace_after_the_delayed_stop(
        api_client, api_user, bots, settings, worker):
    settings.BOT_STOP_DELAY_SECONDS = 0.5
    settings.BOT_STOP_GRACE_SECONDS = 1.5
    meeting = make_meeting(api_user, status=S.ACTIVE, native_meeting_id=MEET_ID)
    container = bots.start(meeting)

    assert api_client.delete(f"/bots/google_meet/{MEET_ID}").status_code == 202
    stop_deadline = Meeting.objects.get(pk=meeting.id).deadline_at
    wait_for(lambda: Meeting.objects.get(pk=meeting.id).status == S.COMPLETED, timeout=20,
             what="the meeting to be completed")

    bot_stopped_at = datetime.fromisoformat(bots.record(container)["stop_requested_at"])
    final = applied(meeting.id)[-1]
    assert (final.to_status, final.completion_reason, final.source) == (
        S.COMPLETED, "stopped", TransitionSource.GRACE_FINALIZER)
    assert stop_deadline <= final.created_at < stop_deadline + timedelta(seconds=2)
    after_stop = (final.created_at - bot_stopped_at).total_seconds()
    assert 1.0 <= after_stop < 1.5 + 2.0, after_stop  # the grace, less the delayed stop's own lateness


@pytest.mark.django_db(transaction=True)
def test_a_bot_resisting_sigterm_longer_than_the_grace_does_not_push_the_ending_past_the_stop_deadline(
        api_client, api_user, bots, settings, worker):
    settings.BOT_STOP_DELAY_SECONDS = 0.5
    settings.BOT_STOP_GRACE_SECONDS = 1
    settings.BOT_STOP_TIMEOUT_SECONDS = 4  # the delayed stop waits that long before SIGKILL
    meeting = make_meeting(api_user, status=S.ACTIVE, native_meeting_id=MEET_ID)
    container = bots.start(meeting, "stubborn")

    assert api_client.delete(f"/bots/google_meet/{MEET_ID}").status_code == 202
    wait_for(lambda: Meeting.objects.get(pk=meeting.id).status == S.COMPLETED, timeout=20,
             what="the meeting to be completed")

    meeting.refresh_from_db()
    took = (meeting.end_time - meeting.stop_requested_at).total_seconds()
    assert took < 0.5 + 1 + 1.5, took  # the deadline (delay + grace) and a margin, not delay + 4 s + grace
    assert applied(meeting.id)[-1].source == TransitionSource.GRACE_FINALIZER
    wait_for(lambda: not bots.running(container), what="the bot to be gone")


@pytest.mark.django_db
def test_the_delayed_stop_asks_the_backend_to_stop_the_bot_and_schedules_the_finalizer_after_the_grace(
        bots, settings, django_capture_on_commit_callbacks):
    settings.BOT_STOP_GRACE_SECONDS = 7
    meeting = make_meeting(status=S.ACTIVE)
    container = bots.start(meeting)
    stop_by_user(meeting.id, django_capture_on_commit_callbacks)
    assert [m["args"] for m in queued_tasks("meetings.delayed_stop")] == [[meeting.id]]

    before = timezone.now()
    run_task(tasks.delayed_stop, meeting.id)

    assert Meeting.objects.get(pk=meeting.id).status == S.STOPPING
    [finalizer] = queued_tasks("meetings.finalize_after_stop")
    assert finalizer["args"] == [meeting.id]
    assert before + timedelta(seconds=7) <= finalizer["eta"] <= timezone.now() + timedelta(seconds=7)
    [terminate] = queued_tasks("meetings.terminate_bot")
    instance = Meeting.objects.get(pk=meeting.id).bot_instance
    # To the queue of the bot's instance: only a worker that sees the bot can signal it.
    assert (terminate["args"], terminate["queue"]) == (["process", container, False, instance],
                                                       instance_queue("orchestrator", instance))
    run_bot_stops()
    assert not bots.running(container)


@pytest.mark.django_db
def test_a_bot_recorded_after_the_delayed_stop_ran_is_asked_to_stop_when_recorded(
        bots, settings, django_capture_on_commit_callbacks):
    settings.BOT_STOP_DELAY_SECONDS = 0
    meeting = make_meeting(status=S.ACTIVE)
    session = make_session(meeting)  # the launch claimed a session and is still starting the bot
    stop_by_user(meeting.id, django_capture_on_commit_callbacks)
    run_task(tasks.delayed_stop, meeting.id)
    assert queued_tasks("meetings.terminate_bot") == []  # no bot recorded yet: nothing to stop
    container = bots.start(make_meeting(status=S.ACTIVE), "stubborn")  # a running bot, not recorded

    with django_capture_on_commit_callbacks(execute=True):
        launch._record_container(meeting.id, session, container, bots.backend, "")

    [terminate] = queued_tasks("meetings.terminate_bot")
    assert terminate["args"][:2] == ["process", container]
    run_bot_stops()
    assert bots.record(container).get("stop_requested_at")  # SIGTERM, the escalation to follow


@pytest.mark.django_db
def test_terminating_a_bot_sends_sigterm_and_schedules_the_kill_after_the_stop_timeout(bots, settings):
    settings.BOT_STOP_TIMEOUT_SECONDS = 6
    meeting = make_meeting(status=S.STOPPING)
    container = bots.start(meeting, "stubborn")

    started = timezone.now()
    run_task(tasks.terminate_bot, "process", container)

    assert (timezone.now() - started).total_seconds() < 1.0  # it asked; it did not wait
    assert bots.running(container)  # a stubborn bot ignores the SIGTERM...
    [kill] = queued_tasks("meetings.kill_bot")
    assert kill["args"] == ["process", container, False, 0, ""]
    assert started + timedelta(seconds=6) <= kill["eta"] <= timezone.now() + timedelta(seconds=6)
    run_bot_stops()  # ...until the kill is due
    assert bots.info(container).exit_code == 137


@pytest.mark.django_db
def test_a_terminate_task_for_another_deployments_bot_is_refused_without_retry_or_kill(bots, caplog):
    # The attack: a terminate_bot task pushed into the broker names a bot that is not ours.
    from orchestrators.base import bot_labels
    from orchestrators.process import ProcessOrchestrator
    from tests.stop.conftest import BOT_COMMANDS

    theirs = ProcessOrchestrator(bots.run_dir, "another-deployment", command=BOT_COMMANDS["sleep"])
    labels = bot_labels(deployment="another-deployment", meeting_id=1, user_id=1, session_uid="s")
    container = theirs.start(BotSpec(name="their-bot", config={}, labels=labels))

    result = run_task(tasks.terminate_bot, "process", container)  # throw=True: a retry would raise

    assert result.successful()
    assert "terminate_bot refused" in caplog.text
    assert queued_tasks("meetings.kill_bot") == []  # no escalation either
    assert theirs.inspect(container).status.is_running
    theirs.stop(container, timeout=0)


@pytest.mark.django_db
def test_the_finalizer_completes_the_meeting_without_calling_the_backend_or_cutting_the_bots_stop_timeout(
        bots, django_capture_on_commit_callbacks):
    meeting = make_meeting(status=S.ACTIVE)
    container = bots.start(meeting, "stubborn")  # ignores SIGTERM
    stop_by_user(meeting.id, django_capture_on_commit_callbacks)
    run_task(tasks.delayed_stop, meeting.id)  # SIGTERM, and the kill scheduled at the stop timeout
    [escalation] = queued_tasks("meetings.terminate_bot")
    run_task(tasks.terminate_bot, *escalation["args"])
    kills_before = queued_tasks("meetings.kill_bot")

    with django_capture_on_commit_callbacks(execute=True):
        run_task(tasks.finalize_after_stop, meeting.id)

    meeting.refresh_from_db()
    assert (meeting.status, meeting.completion_reason) == (S.COMPLETED, "stopped")
    final = applied(meeting.id)[-1]
    assert (final.from_status, final.source) == (S.STOPPING, TransitionSource.GRACE_FINALIZER)
    assert final.metadata == {"container_id": container}
    assert bots.running(container)  # still within the stop timeout its SIGTERM gave it
    assert queued_tasks("meetings.kill_bot") == kills_before  # only the escalation, at the stop timeout


@pytest.mark.django_db
def test_the_finalizer_keeps_the_completion_reason_of_the_stop(bots, django_capture_on_commit_callbacks):
    meeting = make_meeting(status=S.ACTIVE)
    bots.start(meeting)
    with django_capture_on_commit_callbacks(execute=True):
        stopping.request_stop(meeting.id, source=TransitionSource.ORPHAN_SWEEP, reason="maximum bot duration",
                              completion_reason="max_duration")

    run_task(tasks.finalize_after_stop, meeting.id)

    meeting.refresh_from_db()
    assert (meeting.status, meeting.completion_reason) == (S.COMPLETED, "max_duration")


@pytest.mark.django_db
def test_delayed_stop_of_an_ended_meeting_whose_bot_is_gone_does_nothing(bots):
    meeting = make_meeting(status=S.COMPLETED, completion_reason="stopped", end_time=timezone.now())
    container = bots.start(meeting, "exit", 0)
    before, record_before = snapshot(meeting.id), bots.record(container)

    run_task(tasks.delayed_stop, meeting.id)

    assert snapshot(meeting.id) == before
    assert bots.record(container) == record_before  # not even a stop request on the gone bot
    assert queued_tasks("meetings.finalize_after_stop") == []


@pytest.mark.django_db
def test_an_exit_callback_after_finalization_answers_ok_and_changes_nothing(
        bots, django_capture_on_commit_callbacks):
    meeting = _finalized_by_the_stop_flow(bots, django_capture_on_commit_callbacks)
    before = snapshot(meeting.id)
    uid = str(Meeting.objects.get(pk=meeting.id).current_session.session_uid)

    for body in ({"connection_id": uid, "exit_code": 0, "completion_reason": "left_alone"},
                 {"connection_id": uid, "exit_code": 1, "failure_stage": "active"}):
        response = APIClient().post("/bots/internal/callback/exited", body, format="json")
        assert response.status_code == 200, response.content
        assert response.json() == {"status": "ok", "meeting_id": meeting.id, "meeting_status": "completed",
                                   "leave": True}

    after = snapshot(meeting.id)
    late = [t for t in after["transitions"] if t not in before["transitions"]]
    assert {(t[3], t[4]) for t in late} == {(TransitionSource.BOT_CALLBACK, False)}  # recorded as refused
    assert {k: v for k, v in after.items() if k != "transitions"} == \
        {k: v for k, v in before.items() if k != "transitions"}


# --- Duplicates and redelivery ---------------------------------------------------------------------
@pytest.mark.django_db
def test_a_repeated_stop_request_changes_nothing_and_schedules_no_second_delayed_stop(
        api_client, api_user, bots, django_capture_on_commit_callbacks):
    meeting = make_meeting(api_user, status=S.ACTIVE, native_meeting_id=MEET_ID)
    bots.start(meeting)
    with django_capture_on_commit_callbacks(execute=True):
        assert api_client.delete(f"/bots/google_meet/{MEET_ID}").status_code == 202
    before = snapshot(meeting.id)

    with django_capture_on_commit_callbacks(execute=True):
        assert api_client.delete(f"/bots/google_meet/{MEET_ID}").status_code == 202

    assert snapshot(meeting.id) == before
    assert len(queued_tasks("meetings.delayed_stop")) == 1


@pytest.mark.django_db
def test_delayed_stop_run_twice_changes_nothing_the_second_time(bots, django_capture_on_commit_callbacks):
    meeting = make_meeting(status=S.ACTIVE)
    container = bots.start(meeting)
    stop_by_user(meeting.id, django_capture_on_commit_callbacks)
    run_task(tasks.delayed_stop, meeting.id)
    before, record_before = snapshot(meeting.id), bots.record(container)

    run_task(tasks.delayed_stop, meeting.id)  # a redelivery

    assert snapshot(meeting.id) == before
    assert bots.record(container) == record_before
    # Whatever finalizers the two runs scheduled end the meeting once.
    for message in queued_tasks("meetings.finalize_after_stop"):
        run_task(tasks.finalize_after_stop, *message["args"])
    terminal = [t for t in applied(meeting.id) if t.to_status in (S.COMPLETED, S.FAILED)]
    assert len(terminal) == 1


@pytest.mark.django_db
def test_finalize_after_stop_run_twice_changes_nothing_the_second_time(bots, django_capture_on_commit_callbacks):
    meeting = _finalized_by_the_stop_flow(bots, django_capture_on_commit_callbacks)
    before = snapshot(meeting.id)

    run_task(tasks.finalize_after_stop, meeting.id)

    assert snapshot(meeting.id) == before


# --- No bot ----------------------------------------------------------------------------------------
@pytest.mark.django_db
def test_stopping_a_meeting_whose_bot_was_never_launched_completes_it_at_once(
        api_client, api_user, django_capture_on_commit_callbacks):
    meeting = make_meeting(api_user, native_meeting_id=MEET_ID)  # requested, nothing launched yet

    with django_capture_on_commit_callbacks(execute=True):
        assert api_client.delete(f"/bots/google_meet/{MEET_ID}").status_code == 202

    meeting.refresh_from_db()
    assert (meeting.status, meeting.completion_reason) == (S.COMPLETED, "stopped")
    assert meeting.end_time is not None
    last = applied(meeting.id)[-1]
    assert (last.from_status, last.to_status, last.source) == (S.REQUESTED, S.COMPLETED, TransitionSource.USER)
    assert queued_tasks("meetings.delayed_stop") == []


def _finalized_by_the_stop_flow(bots, capture_on_commit):
    """An active meeting with a bot that ignored the user's stop: delayed stop, then finalizer."""
    meeting = make_meeting(status=S.ACTIVE)
    bots.start(meeting)
    stop_by_user(meeting.id, capture_on_commit)
    run_task(tasks.delayed_stop, meeting.id)
    run_task(tasks.finalize_after_stop, meeting.id)
    return meeting
