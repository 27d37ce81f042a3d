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

Fair across users: a pass takes, per user, at most as many due meetings as they have free seats
(the rest stay `scheduled`, uncounted against anyone), and serves users in turns: every user's
earliest due meeting, then every user's second, ... (within a turn, earliest join_at first). So
neither one user's backlog nor their seat limit can push another user's due meeting out of a pass.
Decision record: docs/decisions/0005-scheduled-is-a-status.md.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from accounts.models import User
from common.queues import LIFECYCLE
from common.tasks import task
from meetings.launching import launch, seats
from meetings.lifecycle import transitions as lifecycle
from meetings.lifecycle.statuses import LIVE, MeetingStatus, TransitionSource
from meetings.models import Meeting

log = logging.getLogger(__name__)

# At most this many claims per pass; the next pass (one interval later) takes the rest.
BATCH = 500


@dataclass
class Summary:
    due: int = 0
    launched: int = 0
    waiting_for_seat: int = 0

    def as_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass(frozen=True)
class Due:
    # (meeting id, user id) to claim now, in turns across users.
    picked: list[tuple[int, int]]
    # Due meetings left out because their user has no free seat for them.
    waiting_for_seat: int


# One statement: the due meetings ranked within their user (earliest join_at first), each user's
# free seats counted once, then at most that many per user, taken in turns (every user's 1st, then
# every user's 2nd, ...). The one row of a not-fitting meeting carries how many did not fit.
_DUE_SQL = """
WITH due AS MATERIALIZED (
    SELECT m.id, m.user_id, m.join_at,
           row_number() OVER (PARTITION BY m.user_id ORDER BY m.join_at, m.id) AS nth
    FROM {meeting} m
    WHERE m.status = %(scheduled)s AND m.join_at <= %(horizon)s AND m.deadline_at > %(now)s
), live AS MATERIALIZED (
    -- Live meetings are few (at most the seats in use): counted through the status index, never
    -- through a user's whole history.
    SELECT l.user_id, count(*) AS n
    FROM {meeting} l
    WHERE l.status = ANY(%(live)s) AND l.user_id IN (SELECT user_id FROM due)
    GROUP BY l.user_id
), owners AS MATERIALIZED (
    SELECT u.id AS user_id,
           CASE WHEN u.max_concurrent_bots = 0 THEN NULL  -- 0: unlimited
                ELSE u.max_concurrent_bots - coalesce(live.n, 0) END AS free
    FROM {user} u LEFT JOIN live ON live.user_id = u.id
    WHERE u.id IN (SELECT user_id FROM due)
), ranked AS (
    SELECT d.id, d.user_id, d.nth, d.join_at, (o.free IS NULL OR d.nth <= o.free) AS fits
    FROM due d JOIN owners o ON o.user_id = d.user_id
)
SELECT id, user_id, fits, waiting FROM (
    SELECT id, user_id, fits,
           count(*) FILTER (WHERE NOT fits) OVER () AS waiting,
           row_number() OVER (PARTITION BY fits ORDER BY nth, join_at, id) AS turn
    FROM ranked
) r
WHERE (fits AND turn <= %(batch)s) OR (NOT fits AND turn = 1)
ORDER BY fits DESC, turn
"""


def due(now: datetime) -> Due:
    """The scheduled meetings to launch now: join_at within the lead time, deadline not yet passed
    (past it the sweep fails the meeting: the two never act on one meeting both ways), at most the
    free seats of each user, at most BATCH in all, in turns across users.

    The seats counted here are a snapshot: `claim` counts again under the user's lock, so a seat
    taken meanwhile only turns a pick into NO_SEAT, never into a launch over the limit."""

    horizon = now + timedelta(seconds=settings.SCHEDULED_LAUNCH_LEAD_SECONDS)
    sql = _DUE_SQL.format(meeting=connection.ops.quote_name(Meeting._meta.db_table),
                          user=connection.ops.quote_name(User._meta.db_table))
    with connection.cursor() as cursor:
        cursor.execute(sql, {"scheduled": MeetingStatus.SCHEDULED.value, "horizon": horizon, "now": now,
                             "live": sorted(str(s) for s in LIVE), "batch": BATCH})
        rows = cursor.fetchall()
    picked = [(meeting_id, user_id) for meeting_id, user_id, fits, _ in rows if fits]
    waiting = next((count for _, _, fits, count in rows if not fits), 0)
    return Due(picked, waiting)


@task(name="meetings.launch_scheduled", queue=LIFECYCLE)
def launch_scheduled() -> dict:
    """Beat's periodic launch of the scheduled bots that are due."""
    return launch_due().as_dict()


def launch_due(now: datetime | None = None) -> Summary:
    """One pass of the scheduler (the beat's): claim and launch the due scheduled meetings that
    have a seat, fairly across users (see `due`)."""
    now = now or timezone.now()
    found = due(now)
    summary = Summary(due=len(found.picked) + found.waiting_for_seat, waiting_for_seat=found.waiting_for_seat)
    for meeting_id, user_id in found.picked:
        outcome = claim(meeting_id, user_id, now)
        summary.launched += int(outcome is Claim.LAUNCHED)
        summary.waiting_for_seat += int(outcome is Claim.NO_SEAT)
    if summary.due:
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
        user = seats.lock_user(user_id)
        try:
            meeting = lifecycle.lock(meeting_id)
        except Meeting.DoesNotExist:
            return Claim.NOT_DUE
        if meeting.status != MeetingStatus.SCHEDULED or meeting.deadline_at is None or meeting.deadline_at <= now:
            return Claim.NOT_DUE
        if seats.seats_taken(user):
            log.info("scheduler: meeting %s waits for a free seat (limit %s)", meeting_id, user.max_concurrent_bots)
            return Claim.NO_SEAT
        result = lifecycle.transition_locked(meeting, MeetingStatus.REQUESTED, source=TransitionSource.LAUNCH,
                                             reason="scheduled join_at reached", only_from={MeetingStatus.SCHEDULED})
        if not result.applied:
            return Claim.NOT_DUE
        transaction.on_commit(lambda: launch.enqueue_launch(meeting_id))
    return Claim.LAUNCHED
