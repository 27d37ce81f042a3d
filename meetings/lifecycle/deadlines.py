"""The deadline each status carries: when the manager acts if neither the bot nor the user does.

PostgreSQL owns every deadline (`Meeting.deadline_at`); every applied transition resets it. Celery
countdown tasks are the fast path, and the beat sweep finalizes whatever is past its deadline.

`DEADLINES` is the one definition of what each deadline means: its length (settings), what the
manager does when it passes (the sweep, meetings/stopping/reconcile.py, carries it out; the stop
flow's finalizer is the fast path of `stopping`'s), what the API shows of it (`action_for`), and
the words of the ending it makes (meetings/lifecycle/endings.py).

Decision record: docs/decisions/0010-deadlines-in-postgresql-the-sweep-as-backstop.md.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings

from meetings.lifecycle.statuses import CompletionReason, MeetingStatus as S

# What the manager does when a deadline passes.
FAIL = "fail"          # failed, at this status's stage
COMPLETE = "complete"  # completed, for `completion_reason`
STOP = "stop"          # the stop flow (→ stopping), for `completion_reason`
FINALIZE = "finalize"  # completed, for the reason the stop recorded


@dataclass(frozen=True)
class Deadline:
    settings: tuple[str, ...]  # the settings whose sum is its length
    act: str
    # The transition's reason (the event log, the admin).
    reason: str
    # What the client reads in Meeting.data (`last_error` of a failure, `completion_detail`
    # otherwise); `{seconds}` is the deadline's length.
    ending: str
    # FAIL: the action's wording; COMPLETE and STOP: the completion reason.
    outcome: str = ""
    # Counted from join_at, not from when the status was entered (the only status that is).
    from_join_at: bool = False

    def seconds(self) -> float:
        return sum(getattr(settings, name) for name in self.settings)

    @property
    def to_status(self) -> str:
        return {FAIL: S.FAILED, COMPLETE: S.COMPLETED, STOP: S.STOPPING, FINALIZE: S.COMPLETED}[self.act]

    def completion_reason(self, stop_reason: str | None = None) -> str | None:
        if self.act == FINALIZE:
            return stop_reason or CompletionReason.STOPPED
        return self.outcome if self.act in (COMPLETE, STOP) else None

    def action(self, stop_reason: str | None = None) -> str:
        """`MeetingResponse.deadline_action`: "<what>: <outcome>"."""
        if self.act == FINALIZE:
            return f"{FINALIZE}: {S.COMPLETED}/{self.completion_reason(stop_reason)}"
        return f"{self.act}: {self.outcome}"


DEADLINES: dict[str, Deadline] = {
    # The end of the launch window: the scheduler launches it before, the sweep fails it after.
    S.SCHEDULED: Deadline(
        ("SCHEDULED_LAUNCH_WINDOW_SECONDS",), FAIL, from_join_at=True,
        outcome="not launched within the launch window",
        reason="scheduled bot not launched within the launch window",
        ending="The scheduled bot was not launched within {seconds:.0f}s after its join_at (the concurrent bot "
               "limit stayed reached, or the scheduler was not running)."),
    S.REQUESTED: Deadline(
        ("REQUESTED_TIMEOUT_SECONDS",), FAIL, outcome="no bot callback",
        reason="no bot callback before the requested timeout",
        ending="No callback from the bot within {seconds:g} s of the request; the manager failed the meeting."),
    S.JOINING: Deadline(
        ("JOINING_TIMEOUT_SECONDS",), FAIL, outcome="bot still joining",
        reason="bot stayed in joining past the timeout",
        ending="The bot was still joining {seconds:g} s after it began; it never reached the waiting room or the "
               "meeting, so the manager failed the meeting."),
    S.AWAITING_ADMISSION: Deadline(
        ("AWAITING_ADMISSION_TIMEOUT_SECONDS",), COMPLETE, outcome=CompletionReason.AWAITING_ADMISSION_TIMEOUT,
        reason="not admitted before the waiting-room timeout",
        ending="Not admitted from the waiting room within {seconds:g} s; the manager ended the wait."),
    S.ACTIVE: Deadline(
        ("MAX_BOT_DURATION_SECONDS",), STOP, outcome=CompletionReason.MAX_DURATION,
        reason="maximum bot duration reached",
        ending="The maximum bot duration ({seconds:g} s) was reached; the manager stopped the bot."),
    # The stop request + the delay before the container stop + the grace for the bot's exit.
    S.STOPPING: Deadline(
        ("BOT_STOP_DELAY_SECONDS", "BOT_STOP_GRACE_SECONDS"), FINALIZE,
        reason="stop deadline passed without the bot's exit",
        ending="The bot did not report after the stop; finalized after the grace period ({seconds:g} s after "
               "the stop request)."),
}


def seconds_for(status: str) -> float | None:
    """The length of a status's deadline from when it is entered (None: it has none, or counts
    from join_at)."""
    deadline = DEADLINES.get(status)
    return None if deadline is None or deadline.from_join_at else deadline.seconds()


def bot_lifetime_bound() -> float:
    """The longest a launched bot can legitimately run: every deadline it can pass through once
    (requested to stopping), plus the stop's grace and a sweep interval per deadline (the sweep
    acts at its own pace). A backend that can have the engine end a bot itself uses it
    (`BotSpec.deadline_seconds`), so a bot outliving all of them ends even with no manager up."""
    launched = [deadline for deadline in DEADLINES.values() if not deadline.from_join_at]  # not `scheduled`
    return (sum(deadline.seconds() for deadline in launched) + settings.BOT_STOP_TIMEOUT_SECONDS
            + len(launched) * settings.ORPHAN_SWEEP_INTERVAL_SECONDS)


def scheduled_deadline(join_at: datetime) -> datetime:
    """The deadline of a `scheduled` meeting: the last moment it may still be launched."""
    return join_at + timedelta(seconds=DEADLINES[S.SCHEDULED].seconds())


def deadline_for(status: str, now: datetime) -> datetime | None:
    seconds = seconds_for(status)
    return None if seconds is None else now + timedelta(seconds=seconds)


def action_for(status: str, stop_reason: str | None = None) -> str | None:
    """What the manager does at a live meeting's deadline if nothing else happens first, as
    `MeetingResponse.deadline_action`: "<what>: <outcome>". None for a terminal meeting."""
    deadline = DEADLINES.get(status)
    return None if deadline is None else deadline.action(stop_reason)
