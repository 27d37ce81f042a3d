"""Celery tasks that declare their queue where they are defined (`@task(name=..., queue=...)`),
and the router that sends them there.

Celery's own `queue=` task option is not used: a task's options take precedence over
`task_routes`, so the operator's CELERY_TASK_ROUTES could no longer move a task. The declared
queue is a route instead, consulted after the operator's (celeryconfig.py); a queue given when
sending (`apply_async(queue=instance_queue(...))`) still wins over both.
"""
from __future__ import annotations

import functools

from celery import Task, current_app, shared_task

from common.queues import QUEUES


class DeclaredTask(Task):
    # The queue this task is routed to (`route`).
    declared_queue: str = ""
    # Its due time is a promise (a countdown, or beat's schedule): how late it starts is measured
    # (observability/metrics.py).
    timed: bool = False


def task(*, name: str, queue: str, timed: bool = False, **options):
    """`shared_task` with its queue declared. `name` is on the wire (queued messages, other hosts):
    never rename a task."""
    if queue not in QUEUES:
        raise ValueError(f"task {name}: unknown queue {queue!r}; choose one of {', '.join(QUEUES)}")
    return shared_task(name=name, base=DeclaredTask, declared_queue=queue, timed=timed, **options)


def route(name, args, kwargs, options, task=None, **kw):
    """The `task_routes` router of declared tasks: the queue the task declared (None for any
    other task: Celery's default queue). A task sent by name from a process that has not loaded
    it (`send_task`) is looked up among the declared ones, so it still reaches its queue."""
    if task is None:
        task = next((t for t in declared_tasks() if t.name == name), None)
    queue = getattr(task, "declared_queue", "")
    return {"queue": queue} if queue else None


def declared_tasks(app=None) -> list[DeclaredTask]:
    """Every declared task of the app, by name. A web process imports a task module only when it
    sends one of its tasks, so every installed app's `tasks` module is imported first (once)."""
    app = app or current_app
    _discover(app)
    return sorted((t for t in app.tasks.values() if isinstance(t, DeclaredTask)), key=lambda t: t.name)


@functools.cache
def _discover(app) -> None:
    from django.apps import apps

    if not apps.ready:  # `celery call <name>`: the CLI sends before anything set Django up
        import django

        django.setup()
    app.autodiscover_tasks(force=True)  # no packages: those of the Django fixup, the installed apps
