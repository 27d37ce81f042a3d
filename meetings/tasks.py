"""Celery tasks: thin wrappers around services. Each re-reads the database (or asks the backend)
and is idempotent, so redelivery (acks_late) and duplicates are harmless. Which queue and pool
runs each one is `task_routes` in celeryconfig.py: lifecycle work never waits behind calls to an
orchestrator or a webhook receiver."""
from __future__ import annotations

from celery import shared_task

from meetings.launching import launch, scheduled
from meetings.stopping import bot_control, flow as stopping, post_meeting as post_meeting_module, reconcile
from orchestrators.base import OrchestratorError

# Transient backend errors are retried; the orphan sweep is the backstop if retries run out.
_RETRY = {"autoretry_for": (OrchestratorError,), "retry_backoff": 2, "retry_backoff_max": 30,
          "max_retries": 5}


@shared_task(name="meetings.launch_bot")
def launch_bot(meeting_id: int) -> None:
    launch.launch(meeting_id)


@shared_task(name="meetings.launch_scheduled")
def launch_scheduled() -> dict:
    return scheduled.launch_due().as_dict()


@shared_task(name="meetings.delayed_stop")
def delayed_stop(meeting_id: int) -> None:
    stopping.delayed_stop(meeting_id)


@shared_task(name="meetings.finalize_after_stop")
def finalize_after_stop(meeting_id: int) -> None:
    stopping.finalize_after_stop(meeting_id)


# Sent to the queue of the bot's instance (bot_control), which only that instance's workers consume.
@shared_task(name="meetings.terminate_bot", **_RETRY)
def terminate_bot(backend: str, container_id: str, remove: bool = False, instance: str = "") -> None:
    bot_control.terminate(backend, container_id, remove, instance)


@shared_task(name="meetings.kill_bot", **_RETRY)
def kill_bot(backend: str, container_id: str, remove: bool = False, checks: int = 0, instance: str = "") -> None:
    bot_control.kill(backend, container_id, remove, checks, instance)


@shared_task(name="meetings.post_meeting")
def post_meeting(meeting_id: int) -> None:
    post_meeting_module.run(meeting_id)


@shared_task(name="meetings.sweep")
def sweep() -> dict:
    _plan, summary = reconcile.sweep()
    return summary.as_dict()


# Sent to the instance's own sweep queue (meetings/stopping/instances.py): only its host can list its bots.
@shared_task(name="meetings.sweep_instance")
def sweep_instance(instance: str) -> dict:
    _plan, summary = reconcile.sweep_instance(instance)
    return summary.as_dict()
