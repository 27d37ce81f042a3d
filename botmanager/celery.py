"""The Celery application, configured from the top-level `celeryconfig` module."""
import os

from celery import Celery
from celery.signals import setup_logging, worker_init

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "botmanager.settings")

# Celery's Django fix-up and every patch of Celery's and kombu's internals, applied as the app is
# created (patches/__init__.py): connections kept between tasks, a worker that survives a broker
# outage; each refuses to start on a celery or kombu it was not written for.
app = Celery("botmanager", fixups=["patches:apply_celery"])
app.config_from_object("celeryconfig")
app.autodiscover_tasks(["meetings", "webhooks"])

# Worker and beat refuse to start with a missing or publicly known secret.
from botmanager import checks as _checks  # noqa: E402

_checks.connect_celery()


@worker_init.connect(weak=False)
def _consume_instance_queues(sender=None, **kwargs):
    """A worker also consumes the queues of this host's backend instance (botmanager/workers.py)."""
    from botmanager import workers

    added = workers.consume_instance_queues(sender)
    if added:
        import logging

        logging.getLogger(__name__).info("worker %s also consumes %s", sender.hostname, ", ".join(added))


@setup_logging.connect(weak=False)
def _use_django_logging(**kwargs):
    """Worker and beat log through the settings' LOGGING (LOG_FORMAT=json gives JSON lines there
    too) instead of Celery's own format."""
    from logging.config import dictConfig

    from django.conf import settings

    dictConfig(settings.LOGGING)


# Sweep runs and what they did are counted in Redis by every worker process (observability/metrics.py).
from observability import metrics  # noqa: E402

metrics.connect_worker_signals()
