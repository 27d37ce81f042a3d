"""The Celery application, configured from the top-level `celeryconfig` module."""
import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "botmanager.settings")

app = Celery("botmanager")
app.config_from_object("celeryconfig")
app.autodiscover_tasks(["meetings"])
