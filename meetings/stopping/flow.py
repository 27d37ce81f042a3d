"""The stop flow: stop request → delayed container stop → post-stop grace finalizer.

1. `request_stop`: persist `stopping` (deadline = now + delay + grace), publish `leave` to the
   bot's current session on commit, and enqueue `delayed_stop` with countdown
   BOT_STOP_DELAY_SECONDS. A meeting with no launched bot finishes at once (completed/stopped).
2. `delayed_stop`: the bot had its chance: enqueue `finalize_after_stop` for the meeting's stop
   deadline (normally BOT_STOP_GRACE_SECONDS from now), then ask its backend to stop it
   (`bot_control.stop_bot`: SIGTERM now, SIGKILL BOT_STOP_TIMEOUT_SECONDS later, on the
   orchestrator queue: a stubborn bot never holds a lifecycle worker).
3. `finalize_after_stop`: if the bot's exit callback still has not ended the meeting, finalize
   completed/stopped. A bot that still runs keeps the rest of its BOT_STOP_TIMEOUT_SECONDS (the
   escalation of step 2 kills it then; the sweep stops every bot whose meeting is over).
A bot recorded only after step 2 ran (its launch was still starting it) is asked to stop when
it is recorded (`bot_recorded_while_stopping`).
Every step re-reads the row and does nothing once the meeting has moved on. The countdowns are
the fast path; the orphan sweep finalizes from `deadline_at` if they are lost.
"""
from __future__ import annotations

import logging

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from common.queues import LIFECYCLE
from common.tasks import task
from meetings.bot_protocol import channels
from meetings.lifecycle import endings, transitions as lifecycle
from meetings.lifecycle.statuses import CompletionReason, MeetingStatus, TransitionSource
from meetings.lifecycle.transitions import Outcome, TransitionResult
from meetings.models import Meeting
from meetings.stopping import bot_control

log = logging.getLogger(__name__)


def bot_launched(meeting: Meeting) -> bool:
    return bool(meeting.bot_container_id or meeting.current_session_id)


def request_stop(meeting_id: int, *, source: str, reason: str,
                 completion_reason: str = CompletionReason.STOPPED,
                 only_from: set[str] | None = None, data_updates: dict | None = None) -> TransitionResult:
    """`data_updates` (merged into `Meeting.data` with the stop) say why the manager stopped it."""
    with transaction.atomic():
        meeting = lifecycle.lock(meeting_id)
        if not meeting.is_terminal and not bot_launched(meeting):
            why = "cancelled before its scheduled launch" if meeting.status == MeetingStatus.SCHEDULED \
                else "no bot was launched"
            return lifecycle.transition_locked(meeting, MeetingStatus.COMPLETED, source=source,
                                               reason=f"{reason}; {why}",
                                               completion_reason=completion_reason, only_from=only_from,
                                               data_updates=data_updates)
        result = lifecycle.transition_locked(meeting, MeetingStatus.STOPPING, source=source, reason=reason,
                                             completion_reason=completion_reason, only_from=only_from,
                                             data_updates=data_updates)
        if result.outcome in (Outcome.APPLIED, Outcome.NOOP) and result.meeting.status == MeetingStatus.STOPPING:
            # A repeated stop re-sends leave: the bot may have missed the first one.
            transaction.on_commit(lambda: channels.publish_leave(meeting_id), robust=True)
        if result.applied:
            transaction.on_commit(lambda: delayed_stop.apply_async(
                (meeting_id,), countdown=settings.BOT_STOP_DELAY_SECONDS), robust=True)
    return result


# Its due time is a promise (`timed`): how late it starts is measured.
@task(name="meetings.delayed_stop", queue=LIFECYCLE, timed=True)
def delayed_stop(meeting_id: int) -> None:
    meeting = Meeting.objects.filter(pk=meeting_id).first()
    if meeting is None:
        return
    if not meeting.is_terminal:
        finalize_after_stop.apply_async((meeting_id,), countdown=finalize_countdown(meeting))
    if meeting.bot_container_id:
        # Also when the meeting already ended: a container that outlived its meeting must go
        # (stopping a gone container is a no-op). Asked on the orchestrator queue, never waited for.
        bot_control.stop_bot(_backend_name(meeting), meeting.bot_container_id, meeting.bot_instance)


def bot_recorded_while_stopping(meeting: Meeting) -> None:
    """A bot recorded (its launch finishing, the sweep adopting it) after its meeting was asked to
    stop: the delayed stop may already have run and found no bot to stop, and the finalizer only
    ends the meeting. Ask it to stop when the delayed stop is due (at once if that has passed);
    a second request for a bot the delayed stop did reach is harmless. Call under the row lock."""
    since_stop = (timezone.now() - meeting.stop_requested_at).total_seconds()  # set with `stopping`
    countdown = max(0.0, settings.BOT_STOP_DELAY_SECONDS - since_stop)
    backend, container_id, instance = _backend_name(meeting), meeting.bot_container_id, meeting.bot_instance
    transaction.on_commit(lambda: bot_control.stop_bot(backend, container_id, instance, countdown=countdown),
                          robust=True)


def finalize_countdown(meeting: Meeting) -> float:
    """Seconds until the finalizer is due: the meeting's stop deadline (stop request + delay +
    grace), never more than the grace from now."""
    grace = settings.BOT_STOP_GRACE_SECONDS
    if meeting.deadline_at is None:
        return grace
    return max(0.0, min(grace, (meeting.deadline_at - timezone.now()).total_seconds()))


@task(name="meetings.finalize_after_stop", queue=LIFECYCLE, timed=True)
def finalize_after_stop(meeting_id: int) -> TransitionResult | None:
    """Finalize a meeting whose bot did not report its exit by the stop deadline.

    The meeting's ending and its bot's end are separate promises: the meeting ends at the stop
    deadline; the bot keeps the BOT_STOP_TIMEOUT_SECONDS it was given with its SIGTERM (to leave,
    flush, upload) and is killed by the escalation `delayed_stop` scheduled. No call to the
    orchestrator here: killing at the grace would cut that time short whenever the grace is the
    shorter, and a burst of kills (50 containers torn down by the engine) would take the cores
    from the finalizers still due."""
    meeting = Meeting.objects.filter(pk=meeting_id).first()
    if meeting is None or meeting.is_terminal:
        return None
    return lifecycle.transition(
        meeting_id, MeetingStatus.COMPLETED, source=TransitionSource.GRACE_FINALIZER,
        reason="bot did not report its exit within the stop grace period",
        completion_reason=CompletionReason.STOPPED,  # lifecycle substitutes the stop's recorded reason
        metadata={"container_id": meeting.bot_container_id},
        data_updates=endings.deadline_passed(MeetingStatus.STOPPING),
    )


def _backend_name(meeting: Meeting) -> str:
    return meeting.orchestrator or settings.ORCHESTRATOR
