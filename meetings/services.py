"""User-facing bot services: request, stop and reconfigure a bot. Views, the admin and tasks call these."""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import datetime

from django.conf import settings
from django.db import IntegrityError, transaction
from redis.exceptions import RedisError

from accounts.models import User
from meetings import retention
from meetings.bot_protocol import channels
from meetings.payloads import timestamp
from meetings.launching import launch, seats
from meetings.lifecycle import transitions as lifecycle
from meetings.lifecycle.errors import (BackendUnavailable, BotLimitReached, DuplicateMeeting, MeetingConflict,
                                       MeetingDataTooLarge, MeetingNotFound, ScheduledBotLimitReached)
from meetings.lifecycle.statuses import EXCLUSIVE, TERMINAL, MeetingStatus, TransitionSource
from meetings.models import Meeting
from meetings.stopping import flow as stopping

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BotRequest:
    platform: str
    native_meeting_id: str
    bot_name: str | None = None
    language: str | None = None
    task: str | None = None
    passcode: str | None = None
    # A later launch (validated by the API: aware, in the future, within SCHEDULED_MAX_AHEAD_DAYS).
    join_at: datetime | None = None


def request_bot(user: User, req: BotRequest) -> Meeting:
    """Create a meeting in `requested` and launch its bot once the request commits; or, with a
    `join_at`, a `scheduled` meeting that meetings/launching/scheduled.py launches when it is due.

    The limit is counted under a lock on the user row, so N concurrent requests at limit L create
    exactly L meetings; the partial unique index makes concurrent duplicates lose with a 409.
    A scheduled bot takes no seat until it is launched, so only the duplicate rule applies to it.
    A refused request leaves no row.
    """
    data = {k: v for k, v in {"bot_name": req.bot_name, "language": req.language, "task": req.task,
                              "passcode": req.passcode}.items() if v is not None}
    if req.join_at is not None:
        # Shown to the user with the other request parameters (the MeetingResponse keeps its
        # Vexa fields); the `join_at` column is what the scheduler reads.
        data["join_at"] = timestamp(req.join_at)
    with transaction.atomic():
        locked = seats.lock_user(user.pk)
        # The duplicate is reported before the limit (as Vexa does): at the limit, a repeated
        # request for a bot the user already has must say so, not "limit reached".
        if Meeting.objects.filter(user_id=user.pk, status__in=sorted(EXCLUSIVE), platform=req.platform,
                                  native_meeting_id=req.native_meeting_id).exists():
            raise _duplicate(req)
        if req.join_at is None and seats.seats_taken(locked):
            raise BotLimitReached(f"User has reached the maximum concurrent bot limit ({locked.max_concurrent_bots}).")
        if req.join_at is not None and seats.schedule_full(locked):
            raise ScheduledBotLimitReached(
                f"User has reached the maximum of scheduled bots ({settings.SCHEDULED_BOTS_PER_USER}): cancel one "
                "(DELETE /bots/{platform}/{native_meeting_id}) or wait until one is launched.")
        try:
            with transaction.atomic():
                meeting = lifecycle.create_meeting(user=locked, platform=req.platform,
                                                   native_meeting_id=req.native_meeting_id, data=data,
                                                   source=TransitionSource.USER, join_at=req.join_at)
        except IntegrityError:
            # The partial unique index: the backstop should any writer skip the user lock.
            raise _duplicate(req) from None
        meeting_id = meeting.id
        if req.join_at is None:
            transaction.on_commit(lambda: launch.enqueue_launch(meeting_id))
    # The launch is enqueued on commit; if that failed, the meeting is already `failed`.
    meeting.refresh_from_db()
    return meeting


def _duplicate(req: BotRequest) -> DuplicateMeeting:
    return DuplicateMeeting(
        f"An active, requested or scheduled meeting already exists for {req.platform}/{req.native_meeting_id}; "
        "stop it first (DELETE /bots/{platform}/{native_meeting_id})."
    )


def _user_meetings(user: User, platform: str, native_meeting_id: str):
    return Meeting.objects.filter(user=user, platform=platform, native_meeting_id=native_meeting_id)


def stop_bot(user: User, platform: str, native_meeting_id: str) -> str:
    """Stop every non-terminal meeting of this user/platform/id; returns the message for the user."""
    meeting_ids = list(_user_meetings(user, platform, native_meeting_id)
                       .exclude(status__in=sorted(TERMINAL)).order_by("-id").values_list("id", flat=True))
    if not meeting_ids:
        newest = _user_meetings(user, platform, native_meeting_id).order_by("-id").first()
        if newest is None:
            raise MeetingNotFound(f"No meeting found for {platform}/{native_meeting_id}.")
        return f"Meeting already {newest.status}."
    for meeting_id in meeting_ids:
        try:
            stopping.request_stop(meeting_id, source=TransitionSource.USER, reason="stop requested by user")
        except Meeting.DoesNotExist:
            continue  # ended and deleted since it was listed: nothing left to stop
    return "Stop request accepted and is being processed."


def reconfigure_bot(user: User, platform: str, native_meeting_id: str, *, language: str | None,
                    task: str | None) -> Meeting:
    with transaction.atomic():
        meeting = (_user_meetings(user, platform, native_meeting_id).select_for_update()
                   .order_by("-id").first())
        if meeting is None:
            raise MeetingNotFound(f"No meeting found for {platform}/{native_meeting_id}.")
        if meeting.status != MeetingStatus.ACTIVE:
            raise MeetingConflict(f"Meeting found but is not active (status: '{meeting.status}')")
        changes = {k: v for k, v in {"language": language, "task": task}.items() if v is not None}
        meeting.data = {**(meeting.data or {}), **changes}
        meeting.save(update_fields=["data", "updated_at"])
        # Sent before commit: if Redis cannot take the command, the change is rolled back and the
        # user gets a 503 to retry, instead of a 500 after a commit the bot never heard of.
        try:
            channels.publish_reconfigure(meeting.id, meeting.data.get("language"), meeting.data.get("task"))
        except RedisError:
            log.warning("meeting %s: could not publish the reconfigure command", meeting.id, exc_info=True)
            raise BackendUnavailable(
                "Could not send the new settings to the bot (its command channel is unavailable); nothing was "
                "changed, retry later.") from None
    return meeting


def list_meetings(user: User, *, limit: int, offset: int = 0, status: str | None = None,
                  platform: str | None = None):
    """The user's meetings, newest first, optionally filtered, a page of `limit` (GET /meetings)."""
    meetings = Meeting.objects.filter(user=user, redacted_at__isnull=True)
    if status is not None:
        meetings = meetings.filter(status=status)
    if platform is not None:
        meetings = meetings.filter(platform=platform)
    meetings = meetings.order_by("-created_at", "-id")
    return meetings[offset:offset + limit]


def update_meeting_data(user: User, platform: str, native_meeting_id: str, changes: dict) -> Meeting:
    with transaction.atomic():
        meeting = (_user_meetings(user, platform, native_meeting_id).select_for_update()
                   .order_by("-id").first())
        if meeting is None:
            raise MeetingNotFound(f"No meeting found for {platform}/{native_meeting_id}.")
        merged = {**(meeting.data or {}), **changes}
        _check_user_data_size(merged, changes.keys())
        meeting.data = merged
        meeting.save(update_fields=["data", "updated_at"])
    return meeting


# The data fields users write (PATCH /meetings/...), as MeetingDataPatchSerializer takes them.
USER_DATA_FIELDS = ("name", "participants", "languages", "notes")


def _check_user_data_size(merged: dict, written) -> None:
    """MEETING_DATA_MAX_BYTES over the user-written fields once merged: every later transition and
    webhook copies the meeting's data. (The fields the manager writes are capped where written.)"""
    user_data = {name: merged[name] for name in USER_DATA_FIELDS if name in merged}
    size = len(json.dumps(user_data, ensure_ascii=False, separators=(",", ":")).encode())
    if size > settings.MEETING_DATA_MAX_BYTES:
        raise MeetingDataTooLarge(
            f"The meeting's {', '.join(USER_DATA_FIELDS)} would take {size} bytes of JSON together; at most "
            f"{settings.MEETING_DATA_MAX_BYTES} are kept (MEETING_DATA_MAX_BYTES). Send less "
            f"({', '.join(sorted(written))} given).")


def delete_meetings(user: User, platform: str, native_meeting_id: str) -> int:
    """Remove the personal data of a user's ended meetings for this platform/id (meetings/retention.py:
    the rows stay for the counts, hidden from the user); returns how many. Idempotent: once done,
    a repeated call finds them redacted and does nothing."""
    with transaction.atomic():
        meetings = list(_user_meetings(user, platform, native_meeting_id).select_for_update().order_by("id"))
        if not meetings:
            gone = Meeting.objects.filter(
                user=user, platform=platform,
                native_meeting_id=retention.redacted_id(user.pk, platform, native_meeting_id)).exists()
            if gone:
                return 0
            raise MeetingNotFound(f"No meeting found for {platform}/{native_meeting_id}.")
        live = [m for m in meetings if m.status not in TERMINAL]
        if live:
            raise MeetingConflict(
                f"Meeting is still {live[0].status}; stop it first (DELETE /bots/{platform}/{native_meeting_id})."
            )
        for meeting in meetings:
            retention.redact(meeting)
    return len(meetings)
