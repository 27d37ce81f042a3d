"""Launching a meeting's bot (run by the `launch_bot` task after the request commits).

Idempotent under redelivery: the session is created and committed before the orchestrator is
asked, so a redelivered launch finds it. A redelivery whose earlier attempt died between
`start()` and recording the container id adopts the running bot (found by its session label)
instead of starting a second one; one that finds the session claimed less than
ORPHAN_GRACE_SECONDS ago leaves it to the attempt under way.
"""
from __future__ import annotations

import logging
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from common.queues import ORCHESTRATOR
from common.tasks import task
from meetings import platforms
from meetings.bot_protocol import channels, tokens
from meetings.launching import bot_credentials
from meetings.lifecycle import deadlines, endings, transitions as lifecycle
from meetings.lifecycle.statuses import FailureStage, MeetingStatus, TransitionSource
from meetings.models import Meeting, MeetingSession
from meetings.stopping import bot_control, flow as stopping
from orchestrators.base import (BotSpec, OrchestratorError, bot_labels as labels_for, bot_name,
                                labels_name_session)
from orchestrators.registry import get_orchestrator

log = logging.getLogger(__name__)


def build_bot_config(meeting: Meeting, session: MeetingSession, container_name: str) -> dict:
    data = meeting.data or {}
    return {
        "meeting_id": meeting.id,
        "platform": meeting.platform,
        "meetingUrl": platforms.meeting_url(meeting.platform, meeting.native_meeting_id, data.get("passcode")),
        "botName": data.get("bot_name") or settings.DEFAULT_BOT_NAME,
        "nativeMeetingId": meeting.native_meeting_id,
        "connectionId": str(session.session_uid),
        "language": data.get("language"),
        "task": data.get("task") or "transcribe",
        # The session's own Redis user (meetings/launching/bot_credentials.py), never the service's.
        "redisUrl": bot_credentials.bot_redis_url(meeting.id, session.session_uid),
        "container_name": container_name,
        "token": tokens.issue(meeting),
        "automaticLeave": {
            "waitingRoomTimeout": settings.BOT_WAITING_ROOM_TIMEOUT_MS,
            "noOneJoinedTimeout": settings.BOT_NO_ONE_JOINED_TIMEOUT_MS,
            "everyoneLeftTimeout": settings.BOT_EVERYONE_LEFT_TIMEOUT_MS,
        },
        "botManagerCallbackUrl": f"{settings.PUBLIC_BASE_URL}/bots/internal/callback/exited",
        # The same URL under the name the Vexa bot 0.10.x reads (its unified-callback.ts posts every
        # report to it, '/exited' replaced by '/status_change'); without it that bot reports nothing.
        "meetingApiCallbackUrl": f"{settings.PUBLIC_BASE_URL}/bots/internal/callback/exited",
    }


def bot_labels(meeting: Meeting, session: MeetingSession) -> dict[str, str]:
    return labels_for(deployment=settings.DEPLOYMENT_NAME, meeting_id=meeting.id, user_id=meeting.user_id,
                      session_uid=session.session_uid)


def _claim_session(meeting_id: int) -> tuple[Meeting, MeetingSession, bool] | None:
    """Lock the meeting; return it with the session to launch, and whether a previous attempt
    already claimed that session. None when there is nothing to launch."""
    with transaction.atomic():
        meeting = Meeting.objects.select_for_update().get(pk=meeting_id)
        if meeting.status != MeetingStatus.REQUESTED or meeting.bot_container_id:
            return None
        if meeting.current_session_id:
            session = meeting.current_session
            if timezone.now() - session.started_at < timedelta(seconds=settings.ORPHAN_GRACE_SECONDS):
                # Another launch claimed it moments ago and is starting the bot (the sweep's
                # relaunch ran alongside the original, delayed launch): starting one here too
                # could make two bots, since that one may not be listed yet to be adopted. If it
                # died, the sweep asks again once the grace has passed.
                log.info("meeting %s: a launch is already under way; nothing to do", meeting_id)
                return None
            return meeting, session, True
        session = MeetingSession.objects.create(meeting=meeting)
        meeting.current_session = session
        meeting.save(update_fields=["current_session", "updated_at"])
        return meeting, session, False


@task(name="meetings.launch_bot", queue=ORCHESTRATOR)
def launch(meeting_id: int) -> str | None:
    """Start the meeting's bot; returns the container id (None when nothing was to be done)."""
    claimed = _claim_session(meeting_id)
    if claimed is None:
        return None
    meeting, session, retried = claimed
    backend = get_orchestrator()
    name = bot_name(meeting.id, str(session.session_uid))
    try:
        instance = backend.instance_id()
        container_id = _adopt(backend, session) if retried else None
        if container_id is None:
            # Before the bot starts: it subscribes with these credentials as soon as it runs.
            bot_credentials.create(meeting.id, session.session_uid)
            spec = BotSpec(name=name, config=build_bot_config(meeting, session, name),
                           labels=bot_labels(meeting, session), deadline_seconds=deadlines.bot_lifetime_bound())
            container_id = backend.start(spec)
    except (OrchestratorError, bot_credentials.CredentialsError, OSError, ValueError) as exc:
        log.warning("meeting %s: bot launch failed: %s", meeting.id, exc)
        lifecycle.transition(meeting.id, MeetingStatus.FAILED, source=TransitionSource.LAUNCH,
                             reason="bot launch failed", failure_stage=FailureStage.REQUESTED,
                             session=session, metadata={"error": endings.error_text(exc)},
                             data_updates=endings.credentials_failed()
                             if isinstance(exc, bot_credentials.CredentialsError) else endings.launch_failed(exc))
        return None
    _record_container(meeting.id, session, container_id, backend, instance)
    return container_id


def _adopt(backend, session: MeetingSession) -> str | None:
    for info in backend.list():
        if labels_name_session(info.labels, session.session_uid):
            return info.container_id
    return None


def _record_container(meeting_id: int, session: MeetingSession, container_id: str, backend, instance: str) -> None:
    with transaction.atomic():
        meeting = Meeting.objects.select_for_update().get(pk=meeting_id)
        meeting.bot_container_id = container_id
        meeting.orchestrator = backend.name
        meeting.bot_instance = instance
        meeting.save(update_fields=["bot_container_id", "orchestrator", "bot_instance", "updated_at"])
        MeetingSession.objects.filter(pk=session.pk).update(instance=instance)
        uid = str(session.session_uid)
        if meeting.current_session_id == session.id:
            # Not when a restarted bot registered a newer session meanwhile: that one is current.
            transaction.on_commit(lambda: channels.set_current_session(meeting_id, uid), robust=True)
        if meeting.is_terminal:
            # Stopped while the bot was starting: the container must not outlive its meeting.
            # If this stop fails, the sweep stops the container of an ended meeting.
            transaction.on_commit(lambda: bot_control.stop_bot(backend.name, container_id, instance), robust=True)
        elif meeting.status == MeetingStatus.STOPPING:
            stopping.bot_recorded_while_stopping(meeting)
    log.info("meeting %s: bot %s started on %s (%s)", meeting_id, container_id, backend.name, instance)


def enqueue_launch(meeting_id: int) -> None:
    """Hand the launch to the worker. If the broker cannot take it, the meeting fails now with the
    error in `data.last_error` (protocol.md) instead of the request answering 500 after its meeting
    was committed, and the meeting waiting in `requested` for the sweep."""
    try:
        launch.delay(meeting_id)
    except Exception as exc:  # noqa: BLE001 (kombu/redis errors: the broker is unreachable)
        log.exception("meeting %s: could not enqueue the bot launch", meeting_id)
        lifecycle.transition(meeting_id, MeetingStatus.FAILED, source=TransitionSource.LAUNCH,
                             reason="bot launch could not be enqueued", failure_stage=FailureStage.REQUESTED,
                             metadata={"error": endings.error_text(exc)}, data_updates=endings.launch_not_enqueued())
