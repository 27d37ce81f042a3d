"""Bot callbacks: resolve the session, register a restarted bot's new session, and move the
meeting through the lifecycle function.

The session uid (`connection_id`) is a capability: unguessable and never shown to users. A bot
that restarted with a new uid proves it belongs to the meeting with its meeting token; that
session then becomes current, and callbacks from older sessions never move the meeting.
"""
from __future__ import annotations

import json
import uuid
from dataclasses import dataclass

from django.db import IntegrityError, transaction
from django.utils import timezone

from . import commands, lifecycle, tokens
from .errors import UnknownSession
from .models import Meeting, MeetingSession
from .statuses import CALLBACK_NAMES, TERMINAL, CompletionReason, MeetingStatus, TransitionSource  # noqa: F401

_SIMPLE_TARGETS = {
    "joining": MeetingStatus.JOINING,
    "awaiting_admission": MeetingStatus.AWAITING_ADMISSION,
    "started": MeetingStatus.ACTIVE,
}
# Characters of a bot's error_details / platform_specific_error kept (as JSON text) per record.
MAX_STORED_DETAIL_CHARS = 4000
# One answer for every session that cannot be used, whatever the reason (unknown uid, missing or
# invalid token, a token naming a meeting that does not exist): no oracle for meeting ids.
UNKNOWN_SESSION = ("Unknown connection_id; a restarted bot registers a new session by sending its meeting "
                   "token as 'Authorization: Bearer <token>'.")
# Statuses a bot may report through `status_change` (it never reports requested or stopping).
REPORTABLE = {MeetingStatus.JOINING, MeetingStatus.AWAITING_ADMISSION, MeetingStatus.ACTIVE,
              MeetingStatus.COMPLETED, MeetingStatus.FAILED}


@dataclass(frozen=True)
class CallbackReport:
    """A parsed callback body (validated by the view's serializer)."""

    name: str
    connection_id: str
    container_id: str | None = None
    status: str | None = None
    exit_code: int | None = None
    reason: str | None = None
    error_details: object = None
    platform_specific_error: object = None
    completion_reason: str | None = None
    failure_stage: str | None = None
    timestamp: str | None = None


@dataclass(frozen=True)
class CallbackResult:
    status: str  # "processed" (the meeting moved) | "ok" (nothing needed changing)
    meeting_id: int
    meeting_status: str
    leave: bool

    def as_response(self) -> dict:
        body = {"status": self.status, "meeting_id": self.meeting_id, "meeting_status": self.meeting_status}
        if self.leave:
            body["leave"] = True
        return body


def handle(report: CallbackReport, bearer_token: str | None) -> CallbackResult:
    uid = _session_uid(report.connection_id)
    target, completion_reason, failure_stage = _target(report)
    attempt = dict(
        source=TransitionSource.BOT_CALLBACK, reason=report.reason or f"bot callback {report.name}",
        completion_reason=completion_reason, failure_stage=failure_stage,
        metadata=_metadata(report), data_updates=_data_updates(report, target),
    )
    result = lifecycle.transition_from_session(uid, target, **attempt)
    if result is None:
        # Not a known session: a restarted bot proves itself with its meeting token.
        _register_session(uid, report.connection_id, bearer_token)
        result = lifecycle.transition_from_session(uid, target, **attempt)
        if result is None:  # its meeting was deleted meanwhile
            raise UnknownSession(UNKNOWN_SESSION)
    if target in TERMINAL:
        _record_exit(uid, report.exit_code)
    meeting = result.meeting
    # A bot whose meeting is being stopped or is over, or that is not the current session, must
    # leave: this reaches a bot that missed the Redis command.
    stale = meeting.current_session_id != result.session.id
    leave = bool(meeting.stop_requested_at) or meeting.status in TERMINAL or stale
    return CallbackResult("processed" if result.applied else "ok", meeting.id, meeting.status, leave)


def _target(report: CallbackReport) -> tuple[str, str | None, str | None]:
    if report.name in _SIMPLE_TARGETS:
        return _SIMPLE_TARGETS[report.name], None, None
    if report.name == "exited":
        if report.exit_code == 0:
            return MeetingStatus.COMPLETED, report.completion_reason or CompletionReason.STOPPED, None
        return MeetingStatus.FAILED, None, report.failure_stage
    # status_change
    target = MeetingStatus(report.status)
    if target == MeetingStatus.COMPLETED:
        return target, report.completion_reason or CompletionReason.STOPPED, None
    if target == MeetingStatus.FAILED:
        return target, None, report.failure_stage
    return target, None, None


def _metadata(report: CallbackReport) -> dict:
    fields = {
        "callback": report.name, "container_id": report.container_id, "exit_code": report.exit_code,
        "error_details": capped(report.error_details),
        "platform_specific_error": capped(report.platform_specific_error),
        "bot_timestamp": report.timestamp,
    }
    return {k: v for k, v in fields.items() if v is not None}


def _data_updates(report: CallbackReport, target: str) -> dict:
    updates = {}
    if target == MeetingStatus.FAILED and (report.error_details or report.reason):
        updates["last_error"] = capped(report.error_details) or report.reason
    if report.platform_specific_error is not None:
        updates["platform_specific_error"] = capped(report.platform_specific_error)
    return updates


def capped(value):
    """A bot's free-form JSON as stored (transition metadata, meeting data): as it came when its
    JSON is at most MAX_STORED_DETAIL_CHARS long, else the start of that JSON text with a marker.
    Every callback attempt is recorded, refused ones too, so an uncapped field let anyone holding a
    session uid grow the tables by the body size per call."""
    if value is None or isinstance(value, (bool, int, float)):
        return value
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    if len(text) <= MAX_STORED_DETAIL_CHARS:
        return value
    return text[:MAX_STORED_DETAIL_CHARS] + f"... [truncated: {len(text)} characters]"


def _session_uid(connection_id: str) -> uuid.UUID:
    try:
        return uuid.UUID(str(connection_id))
    except ValueError:
        raise UnknownSession(UNKNOWN_SESSION) from None


def _register_session(uid: uuid.UUID, connection_id: str, bearer_token: str | None) -> None:
    """A restarted bot's new session becomes the meeting's current one (DB and Redis)."""
    claims = tokens.verify(bearer_token) if bearer_token else None
    if claims is None:
        raise UnknownSession(UNKNOWN_SESSION)
    meeting_id = claims["meeting_id"]
    try:
        with transaction.atomic():
            meeting = Meeting.objects.select_for_update().filter(pk=meeting_id).first()
            if meeting is None:  # deleted since the token was issued; answered like any unusable session
                raise UnknownSession(UNKNOWN_SESSION)
            session = MeetingSession.objects.create(meeting=meeting, session_uid=uid)
            if meeting.status not in TERMINAL:
                meeting.current_session = session
                meeting.save(update_fields=["current_session", "updated_at"])
                transaction.on_commit(lambda: commands.set_current_session(meeting_id, str(uid)), robust=True)
    except IntegrityError:
        pass  # two first callbacks of the same new session raced: the other one registered it


def _record_exit(uid: uuid.UUID, exit_code: int | None) -> None:
    MeetingSession.objects.filter(session_uid=uid, ended_at__isnull=True).update(
        ended_at=timezone.now(), exit_code=exit_code)
