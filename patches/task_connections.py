"""Database connections of Celery workers: kept from one task to the next, as a web worker keeps
them from one request to the next.

Written for celery 5.7.0 (pinned exactly): it subclasses the internals of Celery's Django fix-up
(`DjangoFixup`, `DjangoWorkerFixup`), which closes every connection around every task; a connect
and a SCRAM authentication per task cost more than the task. Here a connection is closed only by
Django's own per-request rule (`close_old_connections`), and a kept one the database dropped is
replaced before the next task. Everything else of Celery's fix-up stays.

Remove it when Celery's fix-up keeps connections by Django's rule on its own (tests/test_task_connections.py
passes without it); context and consequences: docs/decisions/0004-task-connections.md.
"""
from __future__ import annotations

from celery.fixups import django as celery_django

from patches import versions

WRITTEN_FOR = {"celery": ("5.7.0",)}
RECORD = "docs/decisions/0004-task-connections.md"


def check() -> None:
    versions.require("patches/task_connections.py", RECORD, WRITTEN_FOR)


class ReusingWorkerFixup(celery_django.DjangoWorkerFixup):
    def on_task_prerun(self, sender, **kwargs) -> None:
        if not getattr(sender.request, "is_eager", False):
            self.close_database()
            _drop_dead_connections()

    def close_database(self, **kwargs) -> None:
        from django.db import close_old_connections

        close_old_connections()


def _drop_dead_connections() -> None:
    """Before a task: a kept connection the database has dropped (it restarted, or ended the
    session) is closed, so the task's first query opens a new one instead of failing. One
    `SELECT 1` per task, in workers only: the web's callback path does without (a request that
    fails there is retried by its bot)."""
    from django.db import connections

    for conn in connections.all(initialized_only=True):
        if conn.connection is not None and not conn.is_usable():
            conn.close()


class ReusingDjangoFixup(celery_django.DjangoFixup):
    @property
    def worker_fixup(self) -> ReusingWorkerFixup:
        if self._worker_fixup is None:
            self._worker_fixup = ReusingWorkerFixup(self.app)
        return self._worker_fixup

    @worker_fixup.setter
    def worker_fixup(self, value) -> None:
        self._worker_fixup = value


def apply(app):
    """Celery's Django fix-up with the reusing worker fix-up, installed on `app` (the fix-up object
    returned must be kept by the caller: Celery connects its methods with weak references)."""
    check()
    return ReusingDjangoFixup(app).install()
