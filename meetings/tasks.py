"""Celery tasks: thin wrappers around services. Each re-reads the database (or asks the backend)
and is idempotent, so redelivery (acks_late) and duplicates are harmless. Each declares its queue
(common/queues.py: by what its work waits on), so lifecycle work never waits behind calls to an
orchestrator or a webhook receiver; `timed`: its due time is a promise whose lateness is measured."""
from __future__ import annotations

from common.queues import LIFECYCLE, ORCHESTRATOR, POST_MEETING, SWEEP
from common.tasks import task
from meetings.launching import launch, scheduled
from meetings.stopping import bot_control, flow as stopping, post_meeting as post_meeting_module, reconcile
from orchestrators.base import OrchestratorError

# Transient backend errors are retried; the orphan sweep is the backstop if retries run out.
_RETRY = {"autoretry_for": (OrchestratorError,), "retry_backoff": 2, "retry_backoff_max": 30,
          "max_retries": 5}


@task(name="meetings.launch_bot", queue=ORCHESTRATOR)
def launch_bot(meeting_id: int) -> None:
    launch.launch(meeting_id)


@task(name="meetings.launch_scheduled", queue=LIFECYCLE)
def launch_scheduled() -> dict:
    return scheduled.launch_due().as_dict()


@task(name="meetings.delayed_stop", queue=LIFECYCLE, timed=True)
def delayed_stop(meeting_id: int) -> None:
    stopping.delayed_stop(meeting_id)


@task(name="meetings.finalize_after_stop", queue=LIFECYCLE, timed=True)
def finalize_after_stop(meeting_id: int) -> None:
    stopping.finalize_after_stop(meeting_id)


# Sent to the queue of the bot's instance (bot_control), which only that instance's workers consume.
@task(name="meetings.terminate_bot", queue=ORCHESTRATOR, **_RETRY)
def terminate_bot(backend: str, container_id: str, remove: bool = False, instance: str = "") -> None:
    bot_control.terminate(backend, container_id, remove, instance)


@task(name="meetings.kill_bot", queue=ORCHESTRATOR, timed=True, **_RETRY)
def kill_bot(backend: str, container_id: str, remove: bool = False, checks: int = 0, instance: str = "") -> None:
    bot_control.kill(backend, container_id, remove, checks, instance)


@task(name="meetings.post_meeting", queue=POST_MEETING)
def post_meeting(meeting_id: int) -> None:
    post_meeting_module.run(meeting_id)


@task(name="meetings.sweep", queue=SWEEP, timed=True)
def sweep() -> dict:
    _plan, summary = reconcile.sweep()
    return summary.as_dict()


# Sent to the instance's own sweep queue (meetings/stopping/instances.py): only its host can list its bots.
@task(name="meetings.sweep_instance", queue=SWEEP)
def sweep_instance(instance: str) -> dict:
    _plan, summary = reconcile.sweep_instance(instance)
    return summary.as_dict()
