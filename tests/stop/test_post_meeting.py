"""Post-meeting work runs exactly once per meeting, whichever path ended it (bot callback, grace
finalizer, sweep, admin), however often it is enqueued, and a lost enqueue is re-driven by the
sweep. A test step registered in `post_meeting.STEPS` counts the runs per meeting."""
from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone
from rest_framework.test import APIClient

from meetings import tasks
from meetings.lifecycle.statuses import MeetingStatus
from meetings.models import Meeting
from meetings.stopping import post_meeting, reconcile
from tests.factories import make_meeting, make_session
from tests.stop.conftest import admin_finalize, queued_tasks, run_task
from tests.waiting import wait_for, wait_worker_idle

S = MeetingStatus


def ago(seconds: float):
    return timezone.now() - timedelta(seconds=seconds)


def exited_callback(meeting: Meeting, exit_code: int = 0):
    uid = str(Meeting.objects.get(pk=meeting.pk).current_session.session_uid)
    response = APIClient().post("/bots/internal/callback/exited", {"connection_id": uid, "exit_code": exit_code},
                                format="json")
    assert response.status_code == 200, response.content
    return response


def end_by(path: str, meeting: Meeting, console) -> None:
    if path == "callback":
        exited_callback(meeting)
    elif path == "finalizer":
        run_task(tasks.finalize_after_stop, meeting.id)
    elif path == "sweep":
        Meeting.objects.filter(pk=meeting.pk, status__in=[S.STOPPING]).update(deadline_at=ago(1))
        reconcile.sweep()
    elif path == "admin":
        admin_finalize(console, [meeting.id], "completed")


PATHS = ["callback", "finalizer", "sweep", "admin"]


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("path", PATHS)
def test_post_meeting_work_runs_exactly_once_whichever_path_ended_the_meeting(
        path, post_meeting_runs, console, settings, worker):
    settings.ORPHAN_GRACE_SECONDS = 60
    meeting = make_meeting(status=S.STOPPING, deadline_at=timezone.now() + timedelta(hours=1))
    make_session(meeting)

    end_by(path, meeting, console)
    wait_for(lambda: Meeting.objects.get(pk=meeting.pk).post_meeting_done_at, what="post-meeting work to run")
    done_at = Meeting.objects.get(pk=meeting.pk).post_meeting_done_at

    # Every other path tries again, and the work is enqueued again (a duplicate, a redelivery).
    for other in PATHS:
        end_by(other, meeting, console)
    Meeting.objects.filter(pk=meeting.pk).update(end_time=ago(3600))
    reconcile.sweep()
    tasks.post_meeting.delay(meeting.id)
    run_task(tasks.post_meeting, meeting.id)
    wait_worker_idle()

    assert Meeting.objects.get(pk=meeting.pk).status in (S.COMPLETED, S.FAILED)
    assert post_meeting_runs == {meeting.id: 1}
    assert Meeting.objects.get(pk=meeting.pk).post_meeting_done_at == done_at


@pytest.mark.django_db
def test_a_duplicate_post_meeting_run_does_nothing(post_meeting_runs):
    meeting = make_meeting(status=S.COMPLETED, completion_reason="stopped", end_time=timezone.now())

    assert post_meeting.run(meeting.id) is True
    done_at = Meeting.objects.get(pk=meeting.pk).post_meeting_done_at
    assert post_meeting.run(meeting.id) is False

    assert post_meeting_runs == {meeting.id: 1}
    assert Meeting.objects.get(pk=meeting.pk).post_meeting_done_at == done_at


@pytest.mark.django_db
def test_post_meeting_work_does_not_run_for_a_meeting_that_has_not_ended(post_meeting_runs):
    meeting = make_meeting(status=S.STOPPING)

    assert post_meeting.run(meeting.id) is False

    assert post_meeting_runs == {}
    assert Meeting.objects.get(pk=meeting.pk).post_meeting_done_at is None


@pytest.mark.django_db(transaction=True)
def test_two_concurrent_runs_of_the_post_meeting_work_run_it_once(post_meeting_runs):
    meeting = make_meeting(status=S.COMPLETED, completion_reason="stopped", end_time=timezone.now())

    def slow_step(m):
        time.sleep(0.3)  # the second run arrives while the first one holds the row

    post_meeting.STEPS.append(slow_step)
    results = []

    def run():
        try:
            results.append(post_meeting.run(meeting.id))
        finally:
            connection.close()

    try:
        threads = [threading.Thread(target=run) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=10)
    finally:
        post_meeting.STEPS.remove(slow_step)

    assert sorted(results) == [False, True]
    assert post_meeting_runs == {meeting.id: 1}


@pytest.mark.django_db(transaction=True)
def test_a_lost_post_meeting_enqueue_is_re_enqueued_by_the_sweep_and_runs(post_meeting_runs, settings, worker):
    settings.ORPHAN_GRACE_SECONDS = 60
    # Ended a while ago; its post_meeting task never arrived (post_meeting_done_at still empty).
    meeting = make_meeting(status=S.COMPLETED, completion_reason="stopped", end_time=ago(61))

    _plan, summary = reconcile.sweep()

    assert summary.post_meeting_enqueued == 1
    wait_for(lambda: Meeting.objects.get(pk=meeting.pk).post_meeting_done_at, what="post-meeting work to run")
    assert post_meeting_runs == {meeting.id: 1}


@pytest.mark.django_db
def test_the_sweep_leaves_the_post_meeting_work_of_a_meeting_that_just_ended_to_its_own_task(settings):
    settings.ORPHAN_GRACE_SECONDS = 60
    make_meeting(status=S.COMPLETED, completion_reason="stopped", end_time=ago(30))

    _plan, summary = reconcile.sweep()

    assert summary.post_meeting_enqueued == 0
    assert queued_tasks("meetings.post_meeting") == []


@pytest.mark.django_db
def test_a_failed_post_meeting_run_stays_pending_and_the_sweep_runs_it_again(settings):
    settings.ORPHAN_GRACE_SECONDS = 60
    meeting = make_meeting(status=S.COMPLETED, completion_reason="stopped", end_time=ago(61))
    runs = []

    def flaky_step(m):
        runs.append(m.id)
        if len(runs) == 1:
            raise RuntimeError("the outbox table is locked")

    post_meeting.STEPS.append(flaky_step)
    try:
        with pytest.raises(RuntimeError):
            run_task(tasks.post_meeting, meeting.id)
        assert Meeting.objects.get(pk=meeting.pk).post_meeting_done_at is None

        reconcile.sweep()
        [retry] = queued_tasks("meetings.post_meeting")
        run_task(tasks.post_meeting, *retry["args"])
    finally:
        post_meeting.STEPS.remove(flaky_step)

    assert runs == [meeting.id, meeting.id]
    assert Meeting.objects.get(pk=meeting.pk).post_meeting_done_at is not None
