"""A user's seats: how many bots they may have live (`max_concurrent_bots`) and scheduled
(SCHEDULED_BOTS_PER_USER), counted under their row lock, and handing a seated bot to the launcher.
A request (meetings.services) and a scheduled launch (scheduled.py) both take a seat here."""
from __future__ import annotations

import logging

from django.conf import settings

from accounts.models import User
from meetings.lifecycle import endings, transitions as lifecycle
from meetings.lifecycle.statuses import LIVE, FailureStage, MeetingStatus, TransitionSource
from meetings.models import Meeting

log = logging.getLogger(__name__)


def lock_user(user_id: int) -> User:
    """Lock the user row: every seat count (a request, a scheduled launch) is taken under it."""
    return User.objects.select_for_update().only("id", "max_concurrent_bots").get(pk=user_id)


def seats_taken(locked: User) -> bool:
    """Whether the user (row locked by `lock_user`) has no free seat for one more bot."""
    limit = locked.max_concurrent_bots
    return bool(limit) and Meeting.objects.filter(user_id=locked.pk, status__in=sorted(LIVE)).count() >= limit


def schedule_full(locked: User) -> bool:
    """Whether the user (row locked by `lock_user`) has SCHEDULED_BOTS_PER_USER bots waiting to be
    launched: scheduled bots take no seat, and uncapped one user could store thousands."""
    cap = settings.SCHEDULED_BOTS_PER_USER
    return bool(cap) and Meeting.objects.filter(user_id=locked.pk, status=MeetingStatus.SCHEDULED).count() >= cap


def enqueue_launch(meeting_id: int) -> None:
    """Hand the launch to the worker. If the broker cannot take it, the meeting fails now with the
    error in `data.last_error` (protocol.md) instead of the request answering 500 after its meeting
    was committed, and the meeting waiting in `requested` for the sweep."""
    from meetings import tasks

    try:
        tasks.launch_bot.delay(meeting_id)
    except Exception as exc:  # noqa: BLE001 (kombu/redis errors: the broker is unreachable)
        log.exception("meeting %s: could not enqueue the bot launch", meeting_id)
        lifecycle.transition(meeting_id, MeetingStatus.FAILED, source=TransitionSource.LAUNCH,
                             reason="bot launch could not be enqueued", failure_stage=FailureStage.REQUESTED,
                             metadata={"error": endings.error_text(exc)}, data_updates=endings.launch_not_enqueued())
