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
from typing import NamedTuple

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from meetings.bot_protocol import channels as commands, tokens, vocabulary as bot_vocabulary
from meetings.bot_protocol.vocabulary import COMPLETION_REASONS, FAILURE_STAGES, REPORTABLE
from meetings.lifecycle.statuses import NEEDS_HUMAN_HELP
from meetings.payloads import timestamp
from meetings.lifecycle import transitions as lifecycle
from meetings.lifecycle.errors import UnknownSession
from meetings.lifecycle.statuses import (CALLBACK_NAMES, TERMINAL, CompletionReason,  # noqa: F401
                                         MeetingStatus, TransitionSource)
from meetings.models import Meeting, MeetingSession

# The bot's word -> the status it reports (a plain str lookup: the callback hot path).
_REPORTED_STATUS = {s.value: s for s in REPORTABLE}
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
    # The Vexa bot's extras (sent with its terminal status_change): capped and stored, never required.
    speaker_events: object = None
    bot_logs: object = None
    bot_resources: object = None


class Target(NamedTuple):
    """What a report asks for: a status (with its reason or stage), or, when `status` is None, a
    condition of the live meeting recorded under `data[condition]` (the status stays)."""

    status: str | None
    completion_reason: str | None = None
    failure_stage: str | None = None
    condition: str | None = None


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
    target = _target(report)
    raw = _raw_values(report, target)
    metadata = _metadata(report, raw)
    reason = report.reason or f"bot callback {report.name}"
    if target.status is None:
        value = {"reason": report.reason, "reported_at": timestamp(timezone.now())}
        if target.condition != NEEDS_HUMAN_HELP:
            value["status"] = raw.get("bot_status")
        reported = f"bot reported {raw.get('bot_status') or target.condition}"
        reason = f"{reported}: {report.reason}" if report.reason else reported

        def attempt():
            return lifecycle.record_condition_from_session(
                uid, target.condition, value, source=TransitionSource.BOT_CALLBACK, reason=reason, metadata=metadata)
    else:
        updates = _data_updates(report, target.status, raw, metadata)

        def attempt():
            return lifecycle.transition_from_session(
                uid, target.status, source=TransitionSource.BOT_CALLBACK, reason=reason,
                completion_reason=target.completion_reason, failure_stage=target.failure_stage,
                metadata=metadata, data_updates=updates)
    result = attempt()
    if result is None:
        # Not a known session: a restarted bot proves itself with its meeting token.
        _register_session(uid, report.connection_id, bearer_token)
        result = attempt()
        if result is None:  # its meeting was deleted meanwhile
            raise UnknownSession(UNKNOWN_SESSION)
    if target.status in TERMINAL:
        _record_exit(uid, report.exit_code)
    meeting = result.meeting
    # A bot whose meeting is being stopped or is over, or that is not the current session, must
    # leave: this reaches a bot that missed the Redis command.
    stale = meeting.current_session_id != result.session.id
    leave = bool(meeting.stop_requested_at) or meeting.status in TERMINAL or stale
    return CallbackResult("processed" if result.applied else "ok", meeting.id, meeting.status, leave)


def _target(report: CallbackReport) -> Target:
    if report.name in _SIMPLE_TARGETS:
        return Target(_SIMPLE_TARGETS[report.name])
    if report.name == "exited":
        return _ending(report)
    # status_change
    status = _REPORTED_STATUS.get(report.status)
    if status is MeetingStatus.COMPLETED:
        return Target(status, bot_vocabulary.completion_reason(report.completion_reason) or CompletionReason.STOPPED)
    if status is MeetingStatus.FAILED:
        return Target(status, failure_stage=bot_vocabulary.failure_stage(report.failure_stage))
    if status is not None:
        return Target(status)
    if report.status == NEEDS_HUMAN_HELP:
        return Target(None, condition=NEEDS_HUMAN_HELP)
    # A status we do not define (or one a bot never reports): its exit code, when it sent one,
    # says how the bot ended; without one it is a report about the live meeting.
    if report.exit_code is not None:
        return _ending(report)
    return Target(None, condition="bot_reported_status")


def _ending(report: CallbackReport) -> Target:
    """An exit: code 0 completes (the bot's reason, else stopped), any other fails."""
    if report.exit_code == 0:
        return Target(MeetingStatus.COMPLETED,
                      bot_vocabulary.completion_reason(report.completion_reason) or CompletionReason.STOPPED)
    return Target(MeetingStatus.FAILED, failure_stage=bot_vocabulary.failure_stage(report.failure_stage))


def _raw_values(report: CallbackReport, target: Target) -> dict:
    """The bot's own words wherever the meeting does not carry them as sent: a status, reason or
    stage we do not define, or a reason/stage that does not go with the status it ended in (the
    Vexa bot fails a meeting whose admission the host rejected with a completion reason)."""
    raw = {}
    if report.status is not None and report.status != target.status:
        raw["bot_status"] = report.status
    if report.completion_reason is not None and (
            target.status != MeetingStatus.COMPLETED or report.completion_reason not in COMPLETION_REASONS):
        raw["bot_completion_reason"] = report.completion_reason
    if report.failure_stage is not None and (
            target.status != MeetingStatus.FAILED or report.failure_stage not in FAILURE_STAGES):
        raw["bot_failure_stage"] = report.failure_stage
    return raw


def _metadata(report: CallbackReport, raw: dict) -> dict:
    fields = {
        "callback": report.name, "container_id": report.container_id, "exit_code": report.exit_code,
        "error_details": capped(report.error_details),
        "platform_specific_error": capped(report.platform_specific_error),
        "bot_timestamp": report.timestamp,
    }
    metadata = {k: v for k, v in fields.items() if v is not None}
    if raw:
        metadata.update(raw)
    if report.bot_logs is not None:
        metadata["bot_logs"] = log_tail(report.bot_logs)
    if report.bot_resources is not None:
        metadata["bot_resources"] = capped(report.bot_resources, settings.CALLBACK_EXTRA_MAX_CHARS)
    if report.speaker_events is not None:
        metadata["speaker_events"] = capped(report.speaker_events, settings.CALLBACK_EXTRA_MAX_CHARS)
    return metadata


def _data_updates(report: CallbackReport, target: str, raw: dict, metadata: dict) -> dict:
    """What the meeting keeps of the report; its free-form fields as `_metadata` already capped them."""
    updates = {}
    if target == MeetingStatus.FAILED and (report.error_details or report.reason):
        updates["last_error"] = metadata.get("error_details") or report.reason
    if report.platform_specific_error is not None:
        updates["platform_specific_error"] = metadata["platform_specific_error"]
    if raw:
        updates.update(raw)
    if report.bot_resources is not None:  # as Vexa's meeting-api keeps it
        updates["bot_resources"] = metadata["bot_resources"]
    return updates


def log_tail(lines) -> list | str:
    """The last CALLBACK_BOT_LOGS_MAX_LINES lines of a bot's `bot_logs`, each cut at
    CALLBACK_BOT_LOG_LINE_MAX_CHARS (a line that is not a string is kept as its JSON text). Anything
    but a list is kept like any other free-form field (capped)."""
    if not isinstance(lines, list):
        return capped(lines, settings.CALLBACK_EXTRA_MAX_CHARS)
    keep, limit = settings.CALLBACK_BOT_LOGS_MAX_LINES, settings.CALLBACK_BOT_LOG_LINE_MAX_CHARS
    tail = []
    for line in lines[-keep:] if keep > 0 else []:
        text = line if isinstance(line, str) else json.dumps(line, ensure_ascii=False, separators=(",", ":"))
        tail.append(text if len(text) <= limit else text[:limit] + f"... [truncated: {len(text)} characters]")
    if len(lines) > len(tail):
        tail.insert(0, f"[{len(lines) - len(tail)} earlier lines not kept]")
    return tail


def capped(value, limit: int = MAX_STORED_DETAIL_CHARS):
    """A bot's free-form JSON as stored (transition metadata, meeting data): as it came when its
    JSON is at most `limit` (MAX_STORED_DETAIL_CHARS) long, else the start of that JSON text with a marker.
    Every callback attempt is recorded, refused ones too, so an uncapped field let anyone holding a
    session uid grow the tables by the body size per call."""
    if value is None or isinstance(value, (bool, int, float)):
        return value
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    if len(text) <= limit:
        return value
    return text[:limit] + f"... [truncated: {len(text)} characters]"


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
