"""The deadline each status carries: when the manager acts if neither the bot nor the user does.

PostgreSQL owns every deadline (`Meeting.deadline_at`); every applied transition resets it. Celery
countdown tasks are the fast path, and the beat sweep finalizes whatever is past its deadline.
Decision record: docs/decisions/0010-deadlines-in-postgresql-the-sweep-as-backstop.md.
"""
from __future__ import annotations

from datetime import datetime, timedelta

from django.conf import settings

from meetings.lifecycle.statuses import MeetingStatus as S


def seconds_for(status: str) -> float | None:
    return {
        S.REQUESTED: settings.REQUESTED_TIMEOUT_SECONDS,
        S.JOINING: settings.JOINING_TIMEOUT_SECONDS,
        S.AWAITING_ADMISSION: settings.AWAITING_ADMISSION_TIMEOUT_SECONDS,
        S.ACTIVE: settings.MAX_BOT_DURATION_SECONDS,
        S.STOPPING: settings.BOT_STOP_DELAY_SECONDS + settings.BOT_STOP_GRACE_SECONDS,
    }.get(status)


def scheduled_deadline(join_at: datetime) -> datetime:
    """The deadline of a `scheduled` meeting: the last moment it may still be launched. It counts
    from join_at, not from when the status was entered (the only status that does)."""
    return join_at + timedelta(seconds=settings.SCHEDULED_LAUNCH_WINDOW_SECONDS)


def deadline_for(status: str, now: datetime) -> datetime | None:
    seconds = seconds_for(status)
    return None if seconds is None else now + timedelta(seconds=seconds)


def action_for(status: str, stop_reason: str | None = None) -> str | None:
    """What the manager does at a live meeting's deadline if nothing else happens first, as
    `MeetingResponse.deadline_action`: "<what>: <outcome>". The sweep (meetings/stopping/reconcile.py) and
    the stop flow's finalizer (meetings/stopping/flow.py) carry these out; None for a terminal meeting."""
    if status == S.STOPPING:
        return f"finalize: completed/{stop_reason or 'stopped'}"
    return _ACTIONS.get(status)


_ACTIONS = {
    # Its deadline is the end of the launch window (join_at + SCHEDULED_LAUNCH_WINDOW_SECONDS); the
    # scheduler launches it before, the sweep fails it after.
    S.SCHEDULED: "fail: not launched within the launch window",
    S.REQUESTED: "fail: no bot callback",
    S.JOINING: "fail: bot still joining",
    S.AWAITING_ADMISSION: "complete: awaiting_admission_timeout",
    S.ACTIVE: "stop: max_duration",
}
