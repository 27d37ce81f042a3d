"""What the user's bots look like from the orchestrator (`GET /bots/status`)."""
from __future__ import annotations

import logging

from meetings.lifecycle.errors import BackendUnavailable
from meetings.lifecycle.statuses import MeetingStatus
from meetings.models import Meeting
from orchestrators import request_listing
from orchestrators.base import LABEL_SESSION_UID, LABEL_USER_ID, OrchestratorError
from orchestrators.registry import get_orchestrator

# The `normalized_status` of a scheduled bot, next to the orchestrators' (orchestrators/base.py).
SCHEDULED_NORMALIZED = "Scheduled"

log = logging.getLogger(__name__)

UNAVAILABLE = "The bot backend is unavailable, so running bots cannot be listed; try again shortly."


def running_bots(user) -> list[dict]:
    try:
        backend = get_orchestrator()
    except (OrchestratorError, ImportError, ValueError):
        # A misconfigured or unreachable backend is an outage to report, not a server error.
        log.exception("the orchestrator backend could not be loaded")
        raise BackendUnavailable(UNAVAILABLE) from None
    try:
        # Shared, bounded wait: a hung engine answers 503 in ORCHESTRATOR_REQUEST_TIMEOUT_SECONDS.
        bots = request_listing.list_bots(backend)
    except OrchestratorError as exc:
        # The engine's text (its address, socket path) is the operator's, not the tenant's.
        log.warning("GET /bots/status: could not list bots from the %s backend: %s", backend.name, exc)
        raise BackendUnavailable(UNAVAILABLE) from None
    mine = [b for b in bots if b.labels.get(LABEL_USER_ID) == str(user.pk) and b.status.is_running]
    meetings = Meeting.objects.filter(user=user, pk__in=[b.meeting_id for b in mine if b.meeting_id]).only(
        "id", "platform", "native_meeting_id")
    by_id = {m.id: m for m in meetings}
    result = []
    for bot in mine:
        meeting = by_id.get(bot.meeting_id)
        result.append({
            "container_id": bot.container_id,
            "container_name": bot.name,
            "platform": meeting.platform if meeting else None,
            "native_meeting_id": meeting.native_meeting_id if meeting else None,
            "status": bot.raw_status,
            "normalized_status": bot.status.value,
            "created_at": bot.created_at.isoformat() if bot.created_at else None,
            # The session label is a digest of the uid, but a bot started before labels carried
            # digests still has the uid itself there (the bot's capability): the label stays out.
            "labels": {k: v for k, v in bot.labels.items() if k != LABEL_SESSION_UID},
            "meeting_id_from_name": str(bot.meeting_id) if bot.meeting_id else None,
        })
    return result + scheduled_bots(user)


def scheduled_bots(user) -> list[dict]:
    """The user's scheduled bots, which have no container yet: shown with the running ones (the
    same fields, no container; when each joins is the meeting's `data.join_at`), soonest first."""
    scheduled = Meeting.objects.filter(user=user, status=MeetingStatus.SCHEDULED).order_by("join_at", "id").only(
        "id", "platform", "native_meeting_id", "created_at")
    return [{
        "container_id": None,
        "container_name": None,
        "platform": meeting.platform,
        "native_meeting_id": meeting.native_meeting_id,
        "status": MeetingStatus.SCHEDULED.value,
        "normalized_status": SCHEDULED_NORMALIZED,
        "created_at": meeting.created_at.isoformat(),
        "labels": {},
        "meeting_id_from_name": str(meeting.id),
    } for meeting in scheduled]
