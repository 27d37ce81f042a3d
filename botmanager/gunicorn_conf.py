"""gunicorn configuration shared by `make run`, the compose file and the benchmarks:
`gunicorn -c python:botmanager.gunicorn_conf botmanager.wsgi ...`.

- Metrics multiprocess mode: when PROMETHEUS_MULTIPROC_DIR is set, the directory is emptied when
  the master starts (files of an earlier run would add stale counts) and each exiting worker is
  marked dead (prometheus-client's required hook).
- LOG_FORMAT=json: gunicorn's own error and access logs are JSON lines too.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "botmanager.settings")

from django.conf import settings  # noqa: E402  (reading settings does not set Django up)

graceful_timeout = 10

if settings.LOG_FORMAT == "json":
    logconfig_dict = {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": "botmanager.jsonlog.JsonFormatter"}},
        "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "json",
                                 "stream": "ext://sys.stdout"}},
        "root": {"level": settings.LOG_LEVEL, "handlers": ["console"]},
        "loggers": {
            "gunicorn.error": {"level": settings.LOG_LEVEL, "handlers": ["console"], "propagate": False},
            "gunicorn.access": {"level": "INFO", "handlers": ["console"], "propagate": False},
        },
    }


def on_starting(server):
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
