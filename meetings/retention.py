"""What the meetings app forgets, and when.

- `purge_transitions` (a common.retention purger): the transitions, with their event bodies, of
  meetings that ended more than RETENTION_TRANSITIONS_DAYS ago; only terminal meetings, so a live
  meeting's history is never touched. The meeting row stays (the counts need it) and is marked
  `history_purged_at` once its last transition is gone. Each user's event log horizon
  (EventLogHorizon) is raised in the same transaction, so a cursor from before it answers 410
  instead of silently skipping what was deleted (meetings/events/log.py).
- `redact` (DELETE /meetings/{platform}/{native_meeting_id}, as the Vexa API anonymizes): an
  ended meeting keeps its status, times, platform and reasons (what the counts and metrics read),
  loses its data, identifiers and the bodies of its transitions, and is hidden from its user's
  lists. The other apps register what they hold of the meeting (`on_redact`: webhook payloads).
"""
from __future__ import annotations

import json
from datetime import timedelta
from typing import Callable

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone
from django.utils.crypto import salted_hmac

from common import retention
from meetings.lifecycle.statuses import TERMINAL
from meetings.models import EventLogHorizon, Meeting, MeetingTransition
from meetings.payloads import serialized, status_change_event

# What a redacted meeting's data keeps: a mark that it was redacted, nothing the user wrote.
REDACTED_DATA = {"redacted": True}
# A redacted meeting's native id: a keyed digest, so a second DELETE of the same platform and id
# finds it again (and answers as the first did) while the id itself is gone.
REDACTED_ID_PREFIX = "redacted:"

OnRedact = Callable[[Meeting], object]
ON_REDACT: list[OnRedact] = []


def on_redact(step: OnRedact) -> OnRedact:
    """Run `step(meeting)` in the redaction's transaction, after the meeting's own fields are
    scrubbed: for an app that keeps copies of the meeting (webhook payloads)."""
    if step not in ON_REDACT:
        ON_REDACT.append(step)
    return step


def redacted_id(user_id: int, platform: str, native_meeting_id: str) -> str:
    digest = salted_hmac("botmanager.meetings.redacted", f"{user_id}:{platform}:{native_meeting_id}",
                         algorithm="sha256").hexdigest()
    return f"{REDACTED_ID_PREFIX}{digest[:40]}"


def redact(meeting: Meeting) -> None:
    """Remove the personal data of a terminal meeting (its row locked by the caller's transaction)."""
    if meeting.status not in TERMINAL:
        raise ValueError(f"meeting {meeting.pk} is {meeting.status}: only an ended meeting is redacted")
    if meeting.redacted_at is not None:
        return
    meeting.native_meeting_id = redacted_id(meeting.user_id, meeting.platform, meeting.native_meeting_id)
    meeting.data = dict(REDACTED_DATA)
    meeting.bot_container_id = None
    meeting.redacted_at = timezone.now()
    meeting.save(update_fields=["native_meeting_id", "data", "bot_container_id", "redacted_at", "updated_at"])
    for record in MeetingTransition.objects.filter(meeting=meeting).select_related(None):
        record.reason = ""
        record.metadata = {}
        if record.applied:
            record.event = redacted_event(record.event, meeting, record)
        record.save(update_fields=["reason", "metadata", "event"])
    for step in ON_REDACT:
        step(meeting)


def redacted_event(body: str, meeting: Meeting, record: MeetingTransition) -> str:
    """An event body with the meeting's identifiers, data and the transition's reason removed: the
    same shape, id and position in the log, so a consumer reading it later still parses it."""
    event = json.loads(body) if body else status_change_event(meeting, record)
    return serialized(redacted_payload(event))


def redacted_payload(event: dict) -> dict:
    shown = event.get("meeting")
    if isinstance(shown, dict):
        shown.update({"native_meeting_id": None, "constructed_meeting_url": None, "bot_container_id": None,
                      "data": dict(REDACTED_DATA)})
    change = event.get("status_change")
    if isinstance(change, dict):
        change["reason"] = ""
        change.pop("condition", None)
    event["redacted"] = True
    return event


# Meetings read per batch: a meeting has a handful of transitions, so this many fill a batch
# without sending the database a thousand meeting ids each time.
MEETINGS_PER_BATCH_DIVISOR = 4


def purge_transitions(batch_size: int) -> int:
    """Delete up to `batch_size` transitions of meetings ended more than RETENTION_TRANSITIONS_DAYS
    ago, oldest ends first; returns how many."""
    cutoff = timezone.now() - timedelta(days=settings.RETENTION_TRANSITIONS_DAYS)
    with transaction.atomic():
        # The partial index meeting_history_kept: ended meetings whose history is still kept.
        meeting_ids = list(Meeting.objects.filter(status__in=sorted(TERMINAL), history_purged_at__isnull=True,
                                                  end_time__lt=cutoff)
                           .order_by("end_time").values_list("pk", flat=True)
                           [:max(1, batch_size // MEETINGS_PER_BATCH_DIVISOR)])
        if not meeting_ids:
            return 0
        # Unordered: read through the (meeting, id) index, meeting by meeting (common.retention.delete_rows).
        deleted = retention.delete_rows(MeetingTransition.objects.filter(meeting_id__in=meeting_ids).order_by(),
                                        batch_size, before=_raise_horizons)
        # The meetings whose last transition this batch took are done: the next batch starts after them.
        with connection.cursor() as cursor:
            cursor.execute(f"UPDATE {Meeting._meta.db_table} m SET history_purged_at = now() WHERE m.id = ANY(%s) "
                           f"AND NOT EXISTS (SELECT 1 FROM {MeetingTransition._meta.db_table} t "
                           "WHERE t.meeting_id = m.id)", [meeting_ids])
    return deleted


def _raise_horizons(transition_ids: list[int]) -> None:
    """Each user's log horizon up to the newest of their events this batch deletes (one upsert:
    raised, never lowered, whatever runs at the same time)."""
    table = EventLogHorizon._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(f"INSERT INTO {table} (user_id, position, updated_at) "
                       f"SELECT user_id, max(id), now() FROM {MeetingTransition._meta.db_table} "
                       "WHERE id = ANY(%s) AND applied AND user_id IS NOT NULL GROUP BY user_id "
                       f"ON CONFLICT (user_id) DO UPDATE SET position = GREATEST({table}.position, "
                       "EXCLUDED.position), updated_at = EXCLUDED.updated_at", [transition_ids])
