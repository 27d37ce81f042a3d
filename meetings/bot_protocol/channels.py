"""Redis side of the bot protocol: command channels, the current session, status events.

The current session is the meeting row's `current_session`, else Redis `bm:meeting:{id}:current_uid`
(its mirror), else the newest MeetingSession: never the *oldest* one, or a bot that had restarted
(a new session) would never receive its leave command and its meeting would not stop.
"""
from __future__ import annotations

import json
import uuid

from django.utils import timezone

from common.compiled import CompiledQuery
from common.redis_client import get_redis
from meetings.lifecycle.statuses import NEEDS_HUMAN_HELP
from meetings.payloads import deadline
from meetings.models import Meeting, MeetingSession


def meeting_channel(meeting_id: int) -> str:
    return f"bot_commands:meeting:{meeting_id}"


def session_channel(connection_id: str) -> str:
    return f"bot_commands:{connection_id}"


def current_uid_key(meeting_id: int) -> str:
    return f"bm:meeting:{meeting_id}:current_uid"


def status_channel(meeting_id: int) -> str:
    return f"bm:meeting:{meeting_id}:status"


def set_current_session(meeting_id: int, session_uid: str) -> None:
    get_redis().set(current_uid_key(meeting_id), str(session_uid))


# The meeting's current session (its uid only), compiled once per connection: every stop request
# and reconfigure reads it.
_CURRENT_SESSION = CompiledQuery(
    lambda pk: Meeting.objects.select_related("current_session").only("id", "current_session__session_uid")
    .filter(pk=pk), Meeting._meta.pk, 0)


def current_session_uid(meeting_id: int) -> str | None:
    """The uid commands must reach. The meeting row's current session comes first: it is written
    under the row lock and mirrored to Redis only after commit, so the Redis key can lag (a Redis
    blip while a restarted bot registered left it naming the dead session, whose bot no longer listens).
    Then the Redis key, then the newest session (never the oldest)."""
    found = _CURRENT_SESSION.fetch(meeting_id)
    if found and found[0].current_session is not None:
        return str(found[0].current_session.session_uid)
    uid = get_redis().get(current_uid_key(meeting_id))
    if uid:
        return uid
    newest = (
        MeetingSession.objects.filter(meeting_id=meeting_id)
        .order_by("-started_at", "-id")
        .values_list("session_uid", flat=True)
        .first()
    )
    return str(newest) if newest else None


def _publish_command(meeting_id: int, uid: str | None, command: dict) -> None:
    r = get_redis()
    body = json.dumps(command)
    r.publish(meeting_channel(meeting_id), body)
    if uid:
        r.publish(session_channel(uid), body)


def publish_leave(meeting_id: int) -> str | None:
    """Publish `leave` on the meeting channel and the current session's channel; returns that uid."""
    uid = current_session_uid(meeting_id)
    _publish_command(meeting_id, uid, {"action": "leave", "meeting_id": meeting_id, "connection_id": uid,
                                       "command_id": str(uuid.uuid4())})
    return uid


def publish_reconfigure(meeting_id: int, language: str | None, task: str | None) -> str | None:
    uid = current_session_uid(meeting_id)
    _publish_command(meeting_id, uid, {"action": "reconfigure", "meeting_id": meeting_id, "uid": uid,
                                       "language": language, "task": task, "command_id": str(uuid.uuid4())})
    return uid


def publish_status(meeting: Meeting, record, pipe) -> None:
    """The meeting's status on its channel, after a transition (a lifecycle notifier: `pipe` is
    the Redis pipeline every notifier of the transition shares)."""
    payload = {"status": meeting.status, **deadline(meeting)}
    help_needed = (meeting.data or {}).get(NEEDS_HUMAN_HELP)
    if help_needed:  # a condition of the live meeting its bot reported (meetings/bot_protocol/vocabulary.py)
        payload[NEEDS_HUMAN_HELP] = help_needed
    event = {
        "type": "meeting.status",
        "meeting": {"id": meeting.id, "platform": meeting.platform, "native_id": meeting.native_meeting_id},
        "payload": payload,
        "ts": timezone.now().isoformat(),
    }
    pipe.publish(status_channel(meeting.id), json.dumps(event))
