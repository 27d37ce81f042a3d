"""Endings the manager makes itself explain themselves (meetings/lifecycle/endings.py): when the sweep, the
stop flow's finalizer or the lost-instance policy ends a meeting whose bot said nothing,
`data.last_error` (a failure) or `data.completion_detail` (a completion) says why, in words a
client reads. Real sweeps against real bots of the process backend."""
from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from meetings.lifecycle.statuses import MeetingStatus, TransitionSource
from meetings.models import Meeting
from meetings.stopping import flow as stopping, instances, operations, reconcile
from orchestrators.registry import get_orchestrator
from tests.factories import make_meeting
from tests.stop.conftest import run_bot_stops

S = MeetingStatus
pytestmark = pytest.mark.django_db


def ago(seconds: float):
    return timezone.now() - timedelta(seconds=seconds)


def swept(meeting) -> Meeting:
    reconcile.sweep()
    run_bot_stops()
    return Meeting.objects.get(pk=meeting.pk)


@pytest.mark.parametrize("status,ended_as,key,words", [
    (S.REQUESTED, S.FAILED, "last_error",
     "No callback from the bot within 20 s of the request; the manager failed the meeting."),
    (S.JOINING, S.FAILED, "last_error",
     "The bot was still joining 600 s after it began; it never reached the waiting room or the meeting, so the "
     "manager failed the meeting."),
    (S.AWAITING_ADMISSION, S.COMPLETED, "completion_detail",
     "Not admitted from the waiting room within 900 s; the manager ended the wait."),
    # The sweep starts the stop flow: the words are there from the stop on, for the completion.
    (S.ACTIVE, S.STOPPING, "completion_detail",
     "The maximum bot duration (7200 s) was reached; the manager stopped the bot."),
    (S.STOPPING, S.COMPLETED, "completion_detail",
     "The bot did not report after the stop; finalized after the grace period (40 s after the stop request)."),
])
def test_a_meeting_ended_at_its_deadline_says_why_in_its_data(bots, settings, status, ended_as, key, words):
    settings.REQUESTED_TIMEOUT_SECONDS = 20
    settings.JOINING_TIMEOUT_SECONDS = 600
    settings.AWAITING_ADMISSION_TIMEOUT_SECONDS = 900
    settings.MAX_BOT_DURATION_SECONDS = 7200
    settings.BOT_STOP_DELAY_SECONDS = 30
    settings.BOT_STOP_GRACE_SECONDS = 10
    meeting = make_meeting(status=status, deadline_at=ago(1))
    bots.start(meeting)

    ended = swept(meeting)

    assert (ended.status, ended.data[key]) == (ended_as, words)
    assert ended_as == S.FAILED or "last_error" not in ended.data


def test_a_stop_the_bot_never_reported_finalized_by_the_grace_finalizer_says_so(bots, settings):
    settings.BOT_STOP_DELAY_SECONDS = 30
    settings.BOT_STOP_GRACE_SECONDS = 10
    meeting = make_meeting(status=S.STOPPING, stop_requested_at=ago(40))

    stopping.finalize_after_stop(meeting.id)

    ended = Meeting.objects.get(pk=meeting.pk)
    assert (ended.status, ended.transitions.last().source) == (S.COMPLETED, TransitionSource.GRACE_FINALIZER)
    assert ended.data["completion_detail"].startswith("The bot did not report after the stop; finalized after the "
                                                      "grace period")


@pytest.mark.parametrize("status,exit_code,ended_as,key,words", [
    (S.ACTIVE, 137, S.FAILED, "last_error",
     "Bot container gone while active (exited, exit code 137); the bot never reported its exit."),
    (S.STOPPING, 0, S.COMPLETED, "completion_detail",
     "Bot container gone after the stop (exited, exit code 0); its exit was never reported, so the manager "
     "finalized the meeting."),
])
def test_a_bot_that_exited_without_reporting_says_how_in_the_meeting_data(bots, settings, status, exit_code,
                                                                             ended_as, key, words):
    settings.ORPHAN_GRACE_SECONDS = 60
    meeting = make_meeting(status=status, deadline_at=timezone.now() + timedelta(hours=1))
    bots.start(meeting, "exit", exit_code)
    Meeting.objects.filter(pk=meeting.pk).update(updated_at=ago(61))

    ended = swept(meeting)

    assert (ended.status, ended.data[key]) == (ended_as, words)


def test_a_bot_that_vanished_from_its_backend_says_so_in_last_error(bots, settings):
    settings.ORPHAN_GRACE_SECONDS = 60
    meeting = make_meeting(status=S.JOINING, deadline_at=timezone.now() + timedelta(hours=1), updated_at=ago(61),
                           bot_container_id="proc-0123456789ab", orchestrator="process",
                           bot_instance=get_orchestrator("process").instance_id())

    ended = swept(meeting)

    assert ended.data["last_error"] == ("Bot container gone while joining (no longer listed by its backend); "
                                        "the bot never reported its exit.")


@pytest.mark.parametrize("status,key", [(S.ACTIVE, "last_error"), (S.STOPPING, "completion_detail")])
def test_meetings_ended_by_the_lost_instance_policy_say_so(status, key):
    meeting = make_meeting(status=status, bot_instance="docker:lost-host", bot_container_id="c-1")

    instances.end_meetings_of("docker:lost-host", by="an operator")

    ended = Meeting.objects.get(pk=meeting.pk)
    assert ended.status in (S.FAILED, S.COMPLETED)
    assert "host was" in ended.data[key] and "an operator" in ended.data[key]
    # Which host (an engine id, a host name and state directory) is the operator's: the admin shows
    # the transition's metadata; the tenant's data and transition reason do not name it.
    last = ended.transitions.last()
    assert last.metadata["lost_instance"] == "docker:lost-host"
    assert "lost-host" not in ended.data[key] and "lost-host" not in last.reason


@pytest.mark.parametrize("to_status,key", [(S.COMPLETED, "completion_detail"), (S.FAILED, "last_error")])
def test_meetings_an_operator_finalized_say_so(to_status, key):
    meeting = make_meeting(status=S.ACTIVE)

    operations.finalize_meetings([meeting.id], to_status=to_status, failure_stage="active", actor="ops")

    ended = Meeting.objects.get(pk=meeting.pk)
    assert ended.status == to_status
    assert "operator" in ended.data[key] and "ops" not in ended.data[key]
