"""Database connections of Celery workers: kept from one task to the next, as a web worker keeps
them from one request to the next.

Celery's Django fix-up (celery 5.7) closes every database connection before and after every task
unless the undocumented `CELERY_DB_REUSE_MAX` is set, and then closes them every N tasks without
asking whether they still work. Each task then paid a TCP connect and a SCRAM authentication
before its first query: in a storm of 200 stops, more than half of the lifecycle pool's time went
to `psycopg2.connect`, and the finalizers ran seconds late. Here the fix-up applies Django's own
per-request rule around each task instead (`close_old_connections`: close a connection only when
it is unusable, left in a transaction, or older than DB_CONN_MAX_AGE), and a kept connection is
checked before each task, so a worker whose database restarted reconnects instead of failing one
task per process or thread.

Everything else of Celery's fix-up stays: `django.setup()` before tasks are imported, a forked
pool child closes (without I/O) the connections it inherited from its parent.
"""
from __future__ import annotations

from celery.fixups import django as celery_django


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


def fixup(app):
    """`Celery(fixups=[...])` entry (botmanager/celery.py, which has set DJANGO_SETTINGS_MODULE):
    Celery's Django fix-up with the reusing worker fix-up."""
    return ReusingDjangoFixup(app).install()
