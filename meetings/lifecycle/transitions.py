"""The one writer of `Meeting.status`.

`transition()` locks the meeting row, applies the transition table, records the attempt (refused
ones too), resets the meeting's deadline, and registers side effects to run after commit. Two
callbacks, a stop and a sweep racing on one meeting serialize on the row lock; each sees the status
the previous one committed, so exactly one consistent history results.

`transition_from_session()` is the same for a bot callback, which knows its session uid rather
than the meeting id: the session is found and the meeting locked in one statement.
"""
from __future__ import annotations

import enum
import logging
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.db import transaction
from django.utils import timezone

from common import compiled
from common.compiled import CompiledQuery
from common.redis_client import get_redis
from meetings.lifecycle import deadlines, listeners
from meetings.lifecycle.statuses import (CONDITION_KEYS, TERMINAL, CompletionReason, FailureStage, MeetingStatus,
                                         is_allowed)
from meetings.models import Meeting, MeetingSession, MeetingTransition

log = logging.getLogger(__name__)

# The row lock of `transition()`, compiled once per connection (the hot path of bot callbacks).
# The user comes along (unlocked) for the side effects that need it, e.g. the webhook outbox.
_LOCK_MEETING = CompiledQuery(
    lambda pk: Meeting.objects.select_related("user").select_for_update(of=("self",)).filter(pk=pk),
    Meeting._meta.pk, 0)
# The same lock reached through a bot session's uid, with the session, in one statement.
_LOCK_BY_SESSION = CompiledQuery(
    lambda uid: MeetingSession.objects.select_related("meeting__user").select_for_update(of=("meeting",))
    .filter(session_uid=uid),
    MeetingSession._meta.get_field("session_uid"), uuid.UUID(int=0))

class Outcome(str, enum.Enum):
    APPLIED = "applied"
    NOOP = "noop"  # already in the requested status: nothing changed, no side effect
    REFUSED = "refused"  # not allowed by the table, terminal, or from a stale session


@dataclass(frozen=True)
class TransitionResult:
    outcome: Outcome
    meeting: Meeting
    from_status: str
    to_status: str
    record: MeetingTransition | None
    refusal: str = ""
    session: MeetingSession | None = None  # the session the attempt came from, if any

    @property
    def applied(self) -> bool:
        return self.outcome is Outcome.APPLIED


def create_meeting(*, user, platform: str, native_meeting_id: str, data: dict, source: str,
                   join_at: datetime | None = None) -> Meeting:
    """Insert a meeting in `requested` (or `scheduled`, with a `join_at`) with its first
    transition record and deadline.

    Raises IntegrityError when the user already has a live or scheduled meeting for this platform
    and id (the partial unique index); callers run it in a savepoint.
    """
    now = timezone.now()
    if join_at is None:
        status, deadline, reason = MeetingStatus.REQUESTED, deadlines.deadline_for(MeetingStatus.REQUESTED, now), \
            "bot requested"
    else:
        status, deadline, reason = MeetingStatus.SCHEDULED, deadlines.scheduled_deadline(join_at), \
            f"bot scheduled to join at {join_at.isoformat()}"
    with transaction.atomic():
        meeting = Meeting.objects.create(
            user=user, platform=platform, native_meeting_id=native_meeting_id, data=data,
            status=status, deadline_at=deadline, join_at=join_at,
        )
        record = MeetingTransition.objects.create(meeting=meeting, user_id=meeting.user_id, from_status="",
                                                  to_status=status, source=source, reason=reason)
        _announce(meeting, record)
    return meeting


def transition(
    meeting_id: int,
    to_status: str,
    *,
    source: str,
    reason: str = "",
    completion_reason: str | None = None,
    failure_stage: str | None = None,
    session: MeetingSession | None = None,
    require_current_session: bool = False,
    only_from: frozenset[str] | set[str] | None = None,
    metadata: dict[str, Any] | None = None,
    data_updates: dict[str, Any] | None = None,
) -> TransitionResult:
    """Move a meeting to `to_status` if the transition table allows it.

    `require_current_session`: the attempt comes from `session` and must be refused unless that
    session is the meeting's current one (a stale bot never moves the meeting).
    `only_from`: refuse unless the meeting is still in one of these statuses; a decision taken on an
    earlier read (the sweep, a finalizer) must not act on a meeting that has moved on.
    `data_updates` are merged into `Meeting.data` only when the transition applies.
    Raises Meeting.DoesNotExist for an unknown id.
    """
    with transaction.atomic():
        return _transition_locked(
            lock(meeting_id), to_status, source=source, reason=reason, completion_reason=completion_reason,
            failure_stage=failure_stage, session=session, require_current_session=require_current_session,
            only_from=only_from, metadata=metadata, data_updates=data_updates)


def lock(meeting_id: int) -> Meeting:
    """The meeting row (with its user), locked until the current transaction ends: for a caller
    that decides which transition to ask for under the lock (`transition_locked`), the stop
    request. Raises Meeting.DoesNotExist for an unknown id."""
    found = _LOCK_MEETING.fetch(meeting_id)
    if not found:
        raise Meeting.DoesNotExist("Meeting matching query does not exist.")
    return found[0]


def transition_locked(meeting: Meeting, to_status: str, *, source: str, reason: str = "",
                      completion_reason: str | None = None, only_from: frozenset[str] | set[str] | None = None,
                      metadata: dict[str, Any] | None = None,
                      data_updates: dict[str, Any] | None = None) -> TransitionResult:
    """`transition()` of a meeting the caller `lock()`ed in the current transaction (one lock, not
    two). Only the transaction is checked here, not that it holds this meeting's lock."""
    if not transaction.get_connection().in_atomic_block:
        raise transaction.TransactionManagementError("transition_locked() needs the transaction of its lock()")
    return _transition_locked(
        meeting, to_status, source=source, reason=reason, completion_reason=completion_reason, failure_stage=None,
        session=None, require_current_session=False, only_from=only_from, metadata=metadata,
        data_updates=data_updates)


def transition_from_session(
    session_uid: uuid.UUID,
    to_status: str,
    *,
    source: str,
    reason: str = "",
    completion_reason: str | None = None,
    failure_stage: str | None = None,
    metadata: dict[str, Any] | None = None,
    data_updates: dict[str, Any] | None = None,
) -> TransitionResult | None:
    """`transition()` asked for by the bot session `session_uid`: refused unless it is the
    meeting's current session. The session and its meeting are found and the meeting row locked
    in one statement (the bot-callback hot path). None when no session has this uid.
    """
    with transaction.atomic():
        found = _LOCK_BY_SESSION.fetch(session_uid)
        if not found:
            return None
        session = found[0]
        return _transition_locked(
            session.meeting, to_status, source=source, reason=reason, completion_reason=completion_reason,
            failure_stage=failure_stage, session=session, require_current_session=True, only_from=None,
            metadata=metadata, data_updates=data_updates)


def record_condition_from_session(
    session_uid: uuid.UUID,
    key: str,
    value: dict[str, Any],
    *,
    source: str,
    reason: str = "",
    metadata: dict[str, Any] | None = None,
) -> TransitionResult | None:
    """A condition of the live meeting reported by its current bot session (`needs_human_help`): kept
    as `Meeting.data[key]` until the status next changes, recorded as a transition that keeps the
    status (from = to), and announced like one (status event, webhook). The status, its deadline and
    its side effects stay as they are. Refused (and recorded) from a stale session or once the
    meeting has ended; a repeat of the same report changes nothing. None when no session has this uid.
    """
    with transaction.atomic():
        found = _LOCK_BY_SESSION.fetch(session_uid)
        if not found:
            return None
        session = found[0]
        meeting = session.meeting
        status = meeting.status
        metadata = {**(metadata or {}), "condition": key}
        refusal = _refusal(meeting, status, session, True, None) or (
            f"meeting is {status} (terminal)" if status in TERMINAL else None)
        record = MeetingTransition(meeting=meeting, user_id=meeting.user_id, from_status=status, to_status=status,
                                   source=source, reason=reason, session=session, metadata=metadata)
        if refusal is not None:
            record.applied = False
            record.metadata = {**metadata, "refused": refusal}
            _insert_refused(meeting, record)
            return TransitionResult(Outcome.REFUSED, meeting, status, status, record, refusal, session)
        data = dict(meeting.data or {})
        if _same_report(data.get(key), value):
            return TransitionResult(Outcome.NOOP, meeting, status, status, None, session=session)
        data[key] = value
        meeting.data = data
        meeting.save(update_fields=["data", "updated_at"])
        compiled.insert(record)
        log.info("meeting %s: %s reported while %s", meeting.id, key, status, extra={
            "meeting_id": meeting.id, "session_id": session.id, "source": str(source), "condition": key})
        _announce(meeting, record)
        return TransitionResult(Outcome.APPLIED, meeting, status, status, record, session=session)


def _insert_refused(meeting: Meeting, record: MeetingTransition) -> None:
    compiled.insert(record)
    if meeting.history_purged_at is not None:
        # A late attempt (a bot long after the meeting ended) on a meeting whose history retention
        # purged: its history is kept again, so that the next purge, which selects only such
        # meetings, takes this row too instead of keeping it forever.
        meeting.history_purged_at = None
        meeting.save(update_fields=["history_purged_at"])


def _same_report(old, new: dict) -> bool:
    """The same condition reported again (a bot's retry): equal but for when it was reported."""
    if not isinstance(old, dict):
        return False
    return {k: v for k, v in old.items() if k != "reported_at"} == {k: v for k, v in new.items() if k != "reported_at"}


def _transition_locked(meeting: Meeting, to_status: str, *, source, reason, completion_reason, failure_stage,
                       session, require_current_session, only_from, metadata, data_updates) -> TransitionResult:
    """The body of `transition()`, on a meeting row locked in the current transaction."""
    to_status = MeetingStatus(to_status)
    metadata = dict(metadata or {})
    from_status = meeting.status

    refusal = _refusal(meeting, to_status, session, require_current_session, only_from)
    if refusal is None and from_status == to_status:
        return TransitionResult(Outcome.NOOP, meeting, from_status, to_status, None, session=session)

    record = MeetingTransition(
        meeting=meeting, user_id=meeting.user_id, from_status=from_status, to_status=to_status, source=source,
        reason=reason, session=session, metadata=metadata,
    )
    if refusal is not None:
        record.applied = False
        record.completion_reason = completion_reason
        record.failure_stage = failure_stage
        record.metadata = {**metadata, "refused": refusal}
        _insert_refused(meeting, record)
        log.info("meeting %s: refused %s -> %s from %s (%s)", meeting.id, from_status, to_status,
                 source, refusal, extra={
                     "meeting_id": meeting.id, "session_id": session.id if session else None,
                     "source": str(source), "from_status": str(from_status), "to_status": str(to_status),
                     "applied": False, "refusal": refusal})
        return TransitionResult(Outcome.REFUSED, meeting, from_status, to_status, record, refusal, session)

    now = timezone.now()
    changed = _apply(meeting, from_status, to_status, now, completion_reason, failure_stage, data_updates)
    record.completion_reason = meeting.completion_reason if to_status in TERMINAL else None
    record.failure_stage = meeting.failure_stage if to_status == MeetingStatus.FAILED else None
    # = meeting.save(update_fields=changed); record.save(): one round trip (the callback hot path).
    compiled.save_fields_and_insert(meeting, changed, record)
    log.info("meeting %s: %s -> %s by %s%s", meeting.id, from_status, to_status, source,
             f" ({reason})" if reason else "", extra={
                 "meeting_id": meeting.id, "session_id": session.id if session else None,
                 "source": str(source), "from_status": str(from_status), "to_status": str(to_status),
                 "applied": True, "reason": reason})
    _announce(meeting, record)
    return TransitionResult(Outcome.APPLIED, meeting, from_status, to_status, record, session=session)


def _refusal(meeting: Meeting, to_status: str, session: MeetingSession | None,
             require_current_session: bool, only_from) -> str | None:
    if require_current_session and session is not None and meeting.current_session_id != session.id:
        return "stale session: not the meeting's current bot session"
    if only_from is not None and meeting.status not in only_from and meeting.status != to_status:
        return f"meeting moved on: it is {meeting.status}, expected {'/'.join(sorted(only_from))}"
    if meeting.status in TERMINAL:
        return f"meeting is {meeting.status} (terminal)" if meeting.status != to_status else None
    if meeting.status != to_status and not is_allowed(meeting.status, to_status):
        return f"transition {meeting.status} -> {to_status} is not allowed"
    return None


def _apply(meeting: Meeting, from_status: str, to_status: str, now, completion_reason: str | None,
           failure_stage: str | None, data_updates: dict | None) -> list[str]:
    meeting.status = to_status
    meeting.deadline_at = deadlines.deadline_for(to_status, now)
    changed = ["status", "deadline_at", "updated_at"]
    data = dict(meeting.data or {})
    for key in CONDITION_KEYS:  # a bot's condition held only within the status it was reported in
        data.pop(key, None)
    if data_updates:
        data.update(data_updates)
    if to_status == MeetingStatus.ACTIVE and meeting.start_time is None:
        meeting.start_time = now
        changed.append("start_time")
    if to_status == MeetingStatus.STOPPING and meeting.stop_requested_at is None:
        meeting.stop_requested_at = now
        # `completion_reason` of a stop: what the meeting will complete with.
        meeting.stop_reason = completion_reason or CompletionReason.STOPPED
        changed += ["stop_requested_at", "stop_reason"]
    if to_status in TERMINAL:
        meeting.end_time = now
        changed.append("end_time")
    if to_status == MeetingStatus.COMPLETED:
        if completion_reason in (None, CompletionReason.STOPPED) and meeting.stop_requested_at:
            # A meeting the manager stopped (max duration, an admin...) completes with the reason
            # recorded with the stop, whoever reports the end: its bot ("stopped"), the grace
            # finalizer or the sweep.
            completion_reason = meeting.stop_reason or completion_reason
        meeting.completion_reason = completion_reason
        data["completion_reason"] = completion_reason
        changed.append("completion_reason")
    if to_status == MeetingStatus.FAILED:
        # A failure without a stated stage failed in the stage it was in.
        stage = failure_stage or (from_status if from_status in FailureStage.values else None)
        meeting.failure_stage = stage
        data["failure_stage"] = stage
        changed.append("failure_stage")
    meeting.data = data
    changed.append("data")
    return changed


def _announce(meeting: Meeting, record: MeetingTransition) -> None:
    """Tell the listeners (listeners.py) of an applied transition, each at its moment."""
    for listener in listeners.IN_TRANSACTION:
        listener(meeting, record)
    transaction.on_commit(lambda: _notify(meeting, record), robust=True)
    if record.to_status in TERMINAL:
        for on_terminal in listeners.ON_TERMINAL:
            transaction.on_commit(lambda on_terminal=on_terminal: on_terminal(meeting.id), robust=True)


def _notify(meeting: Meeting, record: MeetingTransition) -> None:
    # One round trip for every notifier's messages.
    pipe = get_redis().pipeline(transaction=False)
    for notifier in listeners.NOTIFIERS:
        notifier(meeting, record, pipe)
    pipe.execute()
