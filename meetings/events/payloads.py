"""The MeetingResponse: a meeting as the API shows it (an item of `GET /meetings`) and as webhook
events carry it; and the `meeting.status_change` event body, the same for webhooks and the event
log (`GET /events`, `GET /events/stream`).

A plain function of the Meeting row: the listeners of an applied transition (the webhook outbox,
the event log) build it inside the transition's transaction, below the API layer, which they must
not import. The API serializer returns this same dict, so both stay byte-identical.
"""
from __future__ import annotations

import datetime
import json

from django.core.serializers.json import DjangoJSONEncoder
from rest_framework.fields import DateTimeField

from meetings import platforms
from meetings.lifecycle import deadlines
from meetings.lifecycle.statuses import TERMINAL

STATUS_CHANGE = "meeting.status_change"

# Never shown: the passcode travels only inside the meeting URL; the stop reason is internal
# bookkeeping of the stop flow.
HIDDEN_DATA_KEYS = frozenset({"passcode"})

# DRF's rendering of datetimes (ISO 8601, "Z" for UTC), as every other API timestamp. Its zone
# given (TIME_ZONE is always UTC): DRF would otherwise look the current zone up, through a
# context-local, for each of the 5–7 timestamps of every callback's event (a fifth of their cost).
_datetime = DateTimeField(default_timezone=datetime.timezone.utc).to_representation


def meeting_response(meeting) -> dict:
    data = meeting.data or {}
    return {
        "id": meeting.id,
        "user_id": meeting.user_id,
        "platform": _text(meeting.platform),
        "native_meeting_id": _text(meeting.native_meeting_id),
        "constructed_meeting_url": platforms.meeting_url(meeting.platform, meeting.native_meeting_id,
                                                         data.get("passcode")),
        "status": _text(meeting.status),
        "bot_container_id": _text(meeting.bot_container_id),
        "start_time": timestamp(meeting.start_time),
        "end_time": timestamp(meeting.end_time),
        "data": {k: v for k, v in data.items() if k not in HIDDEN_DATA_KEYS},
        "created_at": timestamp(meeting.created_at),
        "updated_at": timestamp(meeting.updated_at),
        **deadline(meeting),
    }


def deadline(meeting) -> dict:
    """`deadline_at`: when the manager acts on a live meeting if neither its bot nor its user does
    first (a sweep runs it within ORPHAN_SWEEP_INTERVAL_SECONDS after; a stop's finalizer at once);
    `deadline_action`: what it then does (meetings.lifecycle.deadlines.action_for). Both null once it ended."""
    if meeting.status in TERMINAL or meeting.deadline_at is None:
        return {"deadline_at": None, "deadline_action": None}
    return {"deadline_at": timestamp(meeting.deadline_at),
            "deadline_action": deadlines.action_for(meeting.status, meeting.stop_reason)}


def status_change_event(meeting, record) -> dict:
    """The `meeting.status_change` event of the applied transition `record` of `meeting` (the
    meeting as that transition left it)."""
    event = {
        "event": STATUS_CHANGE,
        "meeting": meeting_response(meeting),
        "status_change": {
            "from": record.from_status or None,
            "to": str(record.to_status),
            "reason": record.reason,
            "source": str(record.source),
            "timestamp": timestamp(record.created_at),
        },
    }
    condition = (record.metadata or {}).get("condition")
    if condition:  # a bot's report about the live meeting (needs_human_help): from = to, in meeting.data
        event["status_change"]["condition"] = condition
    return event


def serialized(payload: dict) -> str:
    """An event body as sent: compact, ASCII-only JSON (webhooks sign exactly these bytes)."""
    return json.dumps(payload, cls=DjangoJSONEncoder, separators=(",", ":"))


def _text(value) -> str | None:
    # A status set in this process is a TextChoices member: shown (and serialized) as its value.
    return None if value is None else str(value)


def timestamp(value) -> str | None:
    """A datetime as the API shows it."""
    return None if value is None else _datetime(value)
