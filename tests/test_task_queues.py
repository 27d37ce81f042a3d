"""Each task declares its queue where it is defined (common/tasks.py); the routes and the metrics
read the tasks. The names and queues below are the wire contract: queued messages and other
hosts' workers carry them, so none may change."""
from __future__ import annotations

import pytest

from botmanager.celery import app
from common import queues
from common.tasks import declared_tasks, route
from meetings import tasks
from observability import metrics
from tests.support import lose_queued_tasks, queued_tasks

# name on the wire -> the queue its work waits on.
WIRE = {
    "meetings.launch_bot": "orchestrator",
    "meetings.terminate_bot": "orchestrator",
    "meetings.kill_bot": "orchestrator",
    "webhooks.deliver": "webhooks",
    "meetings.post_meeting": "post_meeting",
    "meetings.sweep": "sweep",
    "meetings.sweep_instance": "sweep",
    "meetings.delayed_stop": "lifecycle",
    "meetings.finalize_after_stop": "lifecycle",
    "meetings.launch_scheduled": "lifecycle",
    "webhooks.redrive": "lifecycle",
    "common.retention_purge": "post_meeting",
}


def test_every_task_keeps_its_name_and_declares_the_queue_its_work_waits_on():
    assert {t.name: t.declared_queue for t in declared_tasks()} == WIRE


def test_every_task_of_the_apps_declares_its_queue():
    ours = {name for name in app.tasks if name.split(".")[0] in {"meetings", "webhooks", "common"}}
    assert ours == {t.name for t in declared_tasks()}


def test_a_task_cannot_declare_a_queue_no_worker_consumes():
    from common.tasks import task

    with pytest.raises(ValueError, match="unknown queue 'orchestrater'"):
        task(name="meetings.nowhere", queue="orchestrater")


ARGS = {"meetings.terminate_bot": ("process", "proc-1"), "meetings.kill_bot": ("process", "proc-1"),
        "meetings.sweep": (), "meetings.launch_scheduled": (), "webhooks.redrive": (), "common.retention_purge": (),
        "meetings.sweep_instance": ("process:host-b",)}


@pytest.mark.parametrize("name", sorted(WIRE))
def test_a_sent_task_lands_in_its_declared_queue(name, redis_conn):
    lose_queued_tasks()
    app.tasks[name].apply_async(ARGS.get(name, (0,)), countdown=3600)  # never due: nobody runs it here

    assert [m["queue"] for m in queued_tasks(name)] == [WIRE[name]]
    lose_queued_tasks()


def test_a_task_sent_by_name_from_a_process_that_never_loaded_it_still_reaches_its_queue():
    assert route("meetings.sweep", (), {}, {}, task=None) == {"queue": "sweep"}
    assert route("celery.backend_cleanup", (), {}, {}, task=None) is None


def test_a_task_sent_by_name_before_django_is_set_up_reaches_its_queue():
    """As `celery -A botmanager call meetings.sweep` does: the app's routes, nothing else loaded."""
    import os
    import subprocess
    import sys

    code = ("from botmanager.celery import app\n"
            "print(app.amqp.router.route({}, 'meetings.sweep')['queue'].name)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "DJANGO_SETTINGS_MODULE": "botmanager.settings"})

    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["sweep"]


def test_the_instance_queue_given_when_sending_wins_over_the_declared_queue(redis_conn):
    lose_queued_tasks()
    queue = queues.instance_queue(queues.ORCHESTRATOR, "process:host-b")
    tasks.kill_bot.apply_async(("process", "proc-1", False, 0, "process:host-b"), queue=queue, countdown=3600)

    assert [m["queue"] for m in queued_tasks("meetings.kill_bot")] == [queue]
    lose_queued_tasks()


def test_the_operators_routes_move_a_declared_task(settings):
    import importlib

    from celery.app.routes import Router, prepare

    import celeryconfig

    settings.CELERY_TASK_ROUTES = {"meetings.post_meeting": {"queue": "lifecycle"}}
    try:
        router = Router(prepare(importlib.reload(celeryconfig).task_routes), app.amqp.queues, True, app)
    finally:
        settings.CELERY_TASK_ROUTES = {}
        importlib.reload(celeryconfig)

    def queue(task):
        return router.route({}, task.name, task_type=task)["queue"].name

    assert queue(tasks.post_meeting) == "lifecycle"
    assert queue(tasks.sweep) == "sweep"  # the others keep theirs


def test_every_beat_entry_names_a_declared_task():
    declared = {t.name for t in declared_tasks()}
    assert {entry["task"] for entry in app.conf.beat_schedule.values()} <= declared


def test_the_timed_tasks_whose_lateness_is_measured_are_those_declared_timed():
    assert metrics.timed_tasks() == ("meetings.delayed_stop", "meetings.finalize_after_stop", "meetings.kill_bot",
                                     "meetings.sweep")
