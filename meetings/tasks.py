"""Celery tasks: thin wrappers around services. Each re-reads the database and is idempotent, so
redelivery (acks_late) and duplicates are harmless."""
from __future__ import annotations

from celery import shared_task

from orchestrators.base import OrchestratorError

from . import launch, reconcile, stopping
from . import post_meeting as post_meeting_module

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


@shared_task(name="meetings.post_meeting")
def post_meeting(meeting_id: int) -> None:
    post_meeting_module.run(meeting_id)


@shared_task(name="meetings.sweep")
def sweep() -> dict:
    _plan, summary = reconcile.sweep()
    return summary.as_dict()
