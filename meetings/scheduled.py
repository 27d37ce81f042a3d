"""Scheduled bots (`POST /bots` with `join_at`): launched from the database by periodic work.

A scheduled meeting waits in `scheduled` (no bot, no seat) until its join_at, less
SCHEDULED_LAUNCH_LEAD_SECONDS. The beat's `meetings.launch_scheduled` (every
SCHEDULED_LAUNCH_INTERVAL_SECONDS) then claims each due meeting: under the user's row lock (the
seat count, as a request takes it) and the meeting's, the lifecycle function moves it
`scheduled -> requested` (only from `scheduled`) and the launch is enqueued after that commits.
From there it is an ordinary requested meeting.

Why no Celery ETA for join_at: a task held for days by a worker is lost or duplicated across
restarts and visibility timeouts. Here the database is the only schedule, so:
- two beats, two workers or a rerun after a restart cannot launch one meeting twice: the claim is
  the one applied transition out of `scheduled`; every other attempt finds the meeting moved on;
- a crash between the claim and the launch loses nothing: the meeting is `requested` without a
  bot, which the sweep relaunches after ORPHAN_GRACE_SECONDS and fails at REQUESTED_TIMEOUT_SECONDS;
- a cancel (DELETE /bots) before the claim ends the meeting `completed` without any bot; after
  it, the launch finds the meeting ended and starts nothing.
A user at the concurrent-bot limit at join_at keeps the meeting `scheduled` (retried every
interval) until its deadline, join_at + SCHEDULED_LAUNCH_WINDOW_SECONDS, where the sweep fails it.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from . import bots, lifecycle
from .models import Meeting
from .statuses import MeetingStatus, TransitionSource

log = logging.getLogger(__name__)

# At most this many launches per pass; the next pass (one interval later) takes the rest.
BATCH = 500


@dataclass
class Summary:
    due: int = 0
    launched: int = 0
    waiting_for_seat: int = 0

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def due(now: datetime) -> list[tuple[int, int]]:
    """(meeting id, user id) of the scheduled meetings to launch now: join_at within the lead time,
    deadline not yet passed (past it the sweep fails the meeting: the two never act on one meeting
    both ways)."""
    horizon = now + timedelta(seconds=settings.SCHEDULED_LAUNCH_LEAD_SECONDS)
    return list(Meeting.objects.filter(status=MeetingStatus.SCHEDULED, join_at__lte=horizon, deadline_at__gt=now)
                .order_by("join_at").values_list("id", "user_id")[:BATCH])


def launch_due(now: datetime | None = None) -> Summary:
    """One pass of the scheduler (the beat's): claim and launch every due scheduled meeting."""
    now = now or timezone.now()
    ids = due(now)
    summary = Summary(due=len(ids))
    for meeting_id, user_id in ids:
        outcome = claim(meeting_id, user_id, now)
        summary.launched += int(outcome is Claim.LAUNCHED)
        summary.waiting_for_seat += int(outcome is Claim.NO_SEAT)
    if ids:
        log.info("scheduler: %s", summary.as_dict())
    return summary


class Claim:
    LAUNCHED = "launched"
    NO_SEAT = "no_seat"  # the user is at the limit: still scheduled, tried again next pass
    NOT_DUE = "not_due"  # claimed, cancelled or past its deadline meanwhile


def claim(meeting_id: int, user_id: int, now: datetime) -> str:
    """Move one due meeting `scheduled -> requested` and enqueue its launch after commit, if a seat
    is free. Exactly one caller ever applies it (row locks + `only_from`). `user_id`: the meeting's
    owner (`due` reads it with the meeting)."""
    with transaction.atomic():
        # User first, then the meeting: the order `request_bot` locks them in.
        user = bots.lock_user(user_id)
        try:
            meeting = lifecycle.lock(meeting_id)
        except Meeting.DoesNotExist:
            return Claim.NOT_DUE
        if meeting.status != MeetingStatus.SCHEDULED or meeting.deadline_at is None or meeting.deadline_at <= now:
            return Claim.NOT_DUE
        if bots.seats_taken(user):
            log.info("scheduler: meeting %s waits for a free seat (limit %s)", meeting_id, user.max_concurrent_bots)
            return Claim.NO_SEAT
        result = lifecycle.transition_locked(meeting, MeetingStatus.REQUESTED, source=TransitionSource.LAUNCH,
                                             reason="scheduled join_at reached", only_from={MeetingStatus.SCHEDULED})
        if not result.applied:
            return Claim.NOT_DUE
        transaction.on_commit(lambda: bots.enqueue_launch(meeting_id))
    return Claim.LAUNCHED
