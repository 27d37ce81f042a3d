"""Operator actions (the Django admin calls these): finalize meetings by hand, run the sweep."""
from __future__ import annotations

from django.db import transaction

from meetings.bot_protocol import channels
from meetings.lifecycle import endings, transitions as lifecycle
from meetings.lifecycle.statuses import CompletionReason, MeetingStatus, TransitionSource
from meetings.lifecycle.transitions import TransitionResult


def finalize_meetings(meeting_ids: list[int], *, to_status: str, failure_stage: str | None,
                      actor: str) -> list[TransitionResult]:
    """End the given meetings (completed/stopped or failed/<stage>) through the lifecycle function.

    Their bots are told to leave; the sweep stops any container that outlives its meeting.
    """
    results = []
    for meeting_id in meeting_ids:
        with transaction.atomic():
            result = lifecycle.transition(
                # Who did it is in the metadata (the admin shows it); the tenant reads the reason.
                meeting_id, to_status, source=TransitionSource.ADMIN, reason="finalized by an operator",
                completion_reason=CompletionReason.STOPPED if to_status == MeetingStatus.COMPLETED else None,
                failure_stage=failure_stage if to_status == MeetingStatus.FAILED else None,
                metadata={"admin_user": actor}, data_updates=endings.by_operator(to_status),
            )
            if result.applied:
                transaction.on_commit(lambda mid=meeting_id: channels.publish_leave(mid), robust=True)
        results.append(result)
    return results
