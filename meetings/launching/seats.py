"""A user's seats: how many bots they may have live (`max_concurrent_bots`) and scheduled
(SCHEDULED_BOTS_PER_USER), counted under their row lock. A request (meetings.services) and a
scheduled launch (scheduled.py) both take a seat here."""
from __future__ import annotations

from django.conf import settings

from accounts.models import User
from meetings.lifecycle.statuses import LIVE, MeetingStatus
from meetings.models import Meeting


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
