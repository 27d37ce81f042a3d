"""Every patch of a third-party library's internals, one module each, applied from here only.

- `apply_celery(app)`: Celery's fix-up entry (`Celery(fixups=["patches:apply_celery"])` in
  botmanager/celery.py), so it runs when the app is created, in every process that loads it (web,
  worker, beat, manage.py): task_connections, broker_outage.
- `apply_gevent_worker(worker)`: gunicorn's `post_worker_init` (botmanager/gunicorn_conf.py), in
  each gevent web worker after gunicorn's monkey-patching: greenlet_connections, with psycopg2
  made cooperative.

Each patch names the library versions it was written for (`WRITTEN_FOR`) and, before patching
anything, raises `versions.PatchVersionError` on any other: the process refuses to start.
"""
from __future__ import annotations

from patches import broker_outage, greenlet_connections, task_connections

PATCHES = (broker_outage, task_connections, greenlet_connections)


# Each entry runs every check before it patches anything: one refusal leaves the libraries untouched.
def apply_celery(app):
    """Returns the Django fix-up, which Celery keeps (it holds its signal receivers)."""
    task_connections.check()
    broker_outage.check()
    broker_outage.apply(app)
    return task_connections.apply(app)


def apply_gevent_worker(worker) -> None:
    greenlet_connections.check()
    from psycogreen.gevent import patch_psycopg

    # A query waits in the gevent hub, not in libpq: the worker's other connections go on.
    patch_psycopg()
    greenlet_connections.apply(worker)
