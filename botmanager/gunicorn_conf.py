"""gunicorn configuration shared by `make run`, the compose file and the benchmarks:
`gunicorn -c python:botmanager.gunicorn_conf botmanager.wsgi ...`.

- Metrics multiprocess mode: when PROMETHEUS_MULTIPROC_DIR is set, the directory is emptied when
  the master starts (files of an earlier run would add stale counts) and each exiting worker is
  marked dead (prometheus-client's required hook).
- LOG_FORMAT=json: gunicorn's own error and access logs are JSON lines too.
- The master refuses to start with a missing or publicly known secret (botmanager/checks.py).
- Worker class WEB_WORKER_CLASS (gevent by default): a connection is a greenlet, so clients that
  trickle or stall a request wait without holding a worker; psycopg2 is made cooperative
  (psycogreen) in each worker, or one query would block every connection of that worker, and
  Django's connections greenlet-local (patches.apply_gevent_worker).
  Event streams (GET /events/stream) are greenlets waiting on a Redis socket, with places of their
  own: EVENT_STREAMS_PER_WORKER on top of WEB_WORKER_CONNECTIONS.
"""
from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "botmanager.settings")

from django.conf import settings  # noqa: E402  (reading settings does not set Django up)

# gunicorn's gevent worker monkey-patches the standard library in each worker after this master
# imported it; gevent then warns that `ssl` was imported first. The web makes no outbound TLS
# connection (webhooks are sent by the Celery workers) and the module it names (redis.asyncio) is
# not used, so the warning says nothing here; it would also be the one non-JSON line in the logs.
warnings.filterwarnings("ignore", message="Monkey-patching ssl after ssl has already been imported")

graceful_timeout = 10
worker_class = settings.WEB_WORKER_CLASS
# Held event streams have places of their own (meetings/events/stream.py caps them per worker).
worker_connections = settings.WEB_WORKER_CONNECTIONS + settings.EVENT_STREAMS_PER_WORKER
keepalive = settings.WEB_KEEPALIVE_SECONDS

if settings.LOG_FORMAT == "json":
    logconfig_dict = {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": "observability.jsonlog.JsonFormatter"}},
        "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "json",
                                 "stream": "ext://sys.stdout"}},
        "root": {"level": settings.LOG_LEVEL, "handlers": ["console"]},
        "loggers": {
            "gunicorn.error": {"level": settings.LOG_LEVEL, "handlers": ["console"], "propagate": False},
            "gunicorn.access": {"level": "INFO", "handlers": ["console"], "propagate": False},
        },
    }


def on_starting(server):
    from botmanager.checks import refuse_to_start

    refuse_to_start("gunicorn")
    directory = settings.PROMETHEUS_MULTIPROC_DIR
    if directory:
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        for entry in path.iterdir():  # the directory itself may be a mount point (tmpfs)
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()


def child_exit(server, worker):
    if settings.PROMETHEUS_MULTIPROC_DIR:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid, settings.PROMETHEUS_MULTIPROC_DIR)


def post_worker_init(worker):
    """gevent workers (after gunicorn's monkey-patching, before the first request): Django's database
    connections made greenlet-local and handed from one client to the next, psycopg2 cooperative
    (patches/__init__.py)."""
    if "gevent" not in worker.cfg.worker_class_str:
        return
    import patches

    patches.apply_gevent_worker(worker)
