"""The words a bot reports in, mapped to the statuses, reasons and stages of the wire contract.

Be liberal in what bots send: a refused callback makes the Vexa bot give up after its retries and
leaves the meeting to the sweep, so a value this manager does not define is mapped to the closest
defined outcome and kept, as sent, in the transition and in `Meeting.data`. Known values pass
through unchanged (the callback fast path only ever sees those).
"""
from __future__ import annotations

from meetings.lifecycle.statuses import NEEDS_HUMAN_HELP, CompletionReason, FailureStage, MeetingStatus

# Statuses a bot may move a meeting to (it never reports requested or stopping).
REPORTABLE = frozenset({MeetingStatus.JOINING, MeetingStatus.AWAITING_ADMISSION, MeetingStatus.ACTIVE,
                        MeetingStatus.COMPLETED, MeetingStatus.FAILED})

# Completion reasons of Vexa bots and meeting-apis that this manager names otherwise.
_COMPLETION_ALIASES = {
    "max_bot_time_exceeded": CompletionReason.MAX_DURATION,
    "startup_alone": CompletionReason.LEFT_ALONE,
    "left_alone_timeout": CompletionReason.LEFT_ALONE,
    "startup_alone_timeout": CompletionReason.LEFT_ALONE,
    "admission_timeout": CompletionReason.AWAITING_ADMISSION_TIMEOUT,
    "admission_rejected": CompletionReason.AWAITING_ADMISSION_REJECTED,
}
# Our own values (what a bot may send as is; anything else is mapped by the functions below).
COMPLETION_REASONS = frozenset(CompletionReason.values)
FAILURE_STAGES = frozenset(FailureStage.values)


def completion_reason(raw: str | None) -> str | None:
    """Ours for the bot's reason: itself when defined, its alias, else `stopped` (the default of a
    clean end). None when the bot gave none."""
    if not raw or raw in COMPLETION_REASONS:
        return raw or None
    return _COMPLETION_ALIASES.get(raw, CompletionReason.STOPPED)


def failure_stage(raw: str | None) -> str | None:
    """The bot's stage when defined; else None: the meeting failed in the status it was in."""
    return raw if raw in FAILURE_STAGES else None
