"""Celery tasks: thin wrappers around services. Each re-reads the database and is idempotent, so
redelivery (acks_late) and duplicates are harmless."""
from __future__ import annotations

from celery import shared_task

from orchestrators.base import OrchestratorError

from . import launch, stopping

# Transient backend errors are retried; the orphan sweep is the backstop if retries run out.
_RETRY = {"autoretry_for": (OrchestratorError,), "retry_backoff": 2, "retry_backoff_max": 30,
          "max_retries": 5}


@shared_task(name="meetings.launch_bot")
def launch_bot(meeting_id: int) -> None:
    launch.launch(meeting_id)


@shared_task(name="meetings.delayed_stop", **_RETRY)
def delayed_stop(meeting_id: int) -> None:
    stopping.delayed_stop(meeting_id)


@shared_task(name="meetings.finalize_after_stop", **_RETRY)
def finalize_after_stop(meeting_id: int) -> None:
    stopping.finalize_after_stop(meeting_id)
