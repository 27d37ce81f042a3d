"""Stopping a bot without waiting for it: ask, force later, then forget.

Nothing here waits for a bot to die, so a bot that ignores SIGTERM (or an engine that is slow to
kill it) never holds a worker that other meetings need:

1. `stop_bot()` enqueues `terminate_bot` on the orchestrator queue: the backend asks the bot to
   stop (SIGTERM, `docker kill -s TERM`, Nomad stop) and returns at once; `kill_bot` is scheduled
   BOT_STOP_TIMEOUT_SECONDS later.
2. `kill_bot` forces a bot that still runs (SIGKILL). When the bot is to be removed as well, it
   looks again a moment later and removes it once it has exited.

A backend refuses (NotOurBotError) a container that is not this deployment's bot: only a forged
or corrupted task names one, so the refusal is logged and the task ends without a retry or a
follow-up kill.

Every step is idempotent (a gone bot counts as stopped, killed and removed) and safe to run twice.
A lost step is recovered by the orphan sweep, which stops and removes every bot whose meeting is
over. Meetings are never finalized here: that is the lifecycle's work (meetings/stopping/flow.py).
"""
from __future__ import annotations

import logging

from django.conf import settings

from common.queues import ORCHESTRATOR, instance_queue
from common.tasks import task
from orchestrators.base import NotOurBotError, OrchestratorError
from orchestrators.registry import get_orchestrator

log = logging.getLogger(__name__)

# After a kill, how often and how long to look for the exit before removing the bot; past that,
# the sweep removes it.
REMOVE_CHECK_SECONDS = 1.0
REMOVE_CHECKS = 10
# Transient backend errors are retried; the orphan sweep is the backstop if retries run out.
_RETRY = {"autoretry_for": (OrchestratorError,), "retry_backoff": 2, "retry_backoff_max": 30,
          "max_retries": 5}


def stop_bot(backend: str, container_id: str, instance: str, *, remove: bool = False,
             countdown: float | None = None) -> None:
    """Ask the bot to stop (in `countdown` seconds), and force it BOT_STOP_TIMEOUT_SECONDS later
    if it has not. Sent to the queue of the bot's instance: only a worker that sees the bot can
    signal it."""
    terminate.apply_async((backend, container_id, remove, instance), queue=_queue(instance), countdown=countdown)


def kill_bot(backend: str, container_id: str, instance: str, *, remove: bool = False) -> None:
    """Force the bot to stop now (its meeting is over and its time is up)."""
    _send_kill(backend, container_id, remove, instance)


def _queue(instance: str) -> str:
    return instance_queue(ORCHESTRATOR, instance)


def _send_kill(backend: str, container_id: str, remove: bool, instance: str, checks: int = 0,
               countdown: float | None = None) -> None:
    kill.apply_async((backend, container_id, remove, checks, instance), queue=_queue(instance), countdown=countdown)


# Sent to the queue of the bot's instance (`_queue`), which only that instance's workers consume.
@task(name="meetings.terminate_bot", queue=ORCHESTRATOR, **_RETRY)
def terminate(backend: str, container_id: str, remove: bool = False, instance: str = "") -> None:
    try:
        get_orchestrator(backend).terminate(container_id)
    except NotOurBotError as exc:
        log.warning("terminate_bot refused: %s", exc)
        return
    _send_kill(backend, container_id, remove, instance, countdown=settings.BOT_STOP_TIMEOUT_SECONDS)


@task(name="meetings.kill_bot", queue=ORCHESTRATOR, timed=True, **_RETRY)
def kill(backend: str, container_id: str, remove: bool = False, checks: int = 0, instance: str = "") -> None:
    try:
        _kill(get_orchestrator(backend), backend, container_id, remove, checks, instance)
    except NotOurBotError as exc:
        log.warning("kill_bot refused: %s", exc)


def _kill(orchestrator, backend: str, container_id: str, remove: bool, checks: int, instance: str) -> None:
    info = orchestrator.inspect(container_id)
    if info is None:
        return  # gone: nothing to kill or remove
    if info.status.is_running:
        if checks == 0:
            log.info("bot %s on %s still running after its stop timeout; killing it", container_id, backend)
        orchestrator.kill(container_id)
        if remove and checks < REMOVE_CHECKS:
            _send_kill(backend, container_id, remove, instance, checks + 1, countdown=REMOVE_CHECK_SECONDS)
        return
    if remove:
        orchestrator.remove(container_id)
