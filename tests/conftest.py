"""Test session setup: real PostgreSQL and Redis.

With no DATABASE_URL / REDIS_URL, the embedded servers are started for the session (or reused
when `make run` already has them up) and the ones started here are stopped at the end.
"""
from __future__ import annotations

import pytest

from devstack import servers as devstack

_started: devstack.Started | None = None


def pytest_configure(config):
    global _started
    # Not durable (no fsync): a crash may lose test data only. A server `make run` or
    # `devstack start` already runs is reused as it is.
    _started = devstack.ensure_services(durable=False)
    _isolate_parallel_worker()
    _isolate_redis()
    _export_secrets()
    _grant_simbot_recording()


def _export_secrets() -> None:
    """Processes the tests start (gunicorn, Celery workers, manage.py) with another RUN_DIR or
    external URLs get this session's secrets through their environment: they refuse to start
    without them (botmanager/checks.py)."""
    import os

    from django.conf import settings

    for name in ("SECRET_KEY", "BOT_TOKEN_SECRET", "ADMIN_API_TOKEN"):
        os.environ.setdefault(name, getattr(settings, name))


# simbot records every command it handled in `simbot:received:<meeting id>` (a test affordance the
# tests read): the bots' own Redis users may write that list, in this process and the stacks the
# tests start (they inherit the environment).
SIMBOT_GRANTS = "RPUSH simbot:received:{meeting_id}, EXPIRE simbot:received:{meeting_id}"


def _grant_simbot_recording() -> None:
    import os

    from django.conf import settings

    if "simbot:received" not in settings.BOT_REDIS_GRANTS:
        settings.BOT_REDIS_GRANTS = f"{settings.BOT_REDIS_GRANTS}, {SIMBOT_GRANTS}".strip(", ")
    os.environ["BOT_REDIS_GRANTS"] = settings.BOT_REDIS_GRANTS


def _isolate_parallel_worker() -> None:
    """Under pytest-xdist (`-n 2`) each worker process is a session of its own on the shared
    servers (the controller started them): pytest-django gives each its own test database
    (test_<name>_gw<N>); here each also gets its own Redis database, so one worker's in-process
    Celery worker never takes the other's tasks and neither purges the other's queues. Meeting and
    user ids already differ per session (`django_db_setup`), which keeps pub/sub channels apart."""
    import os

    from django.conf import settings

    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    if worker.startswith("gw"):
        settings.TEST_REDIS_DB = settings.TEST_REDIS_DB + int(worker[2:])
        os.environ["TEST_REDIS_DB"] = str(settings.TEST_REDIS_DB)


def _isolate_redis() -> None:
    """Tests use their own Redis database (TEST_REDIS_DB) for keys and the Celery broker, so a
    `make run` on the same server never sees their tasks or keys, nor they its."""
    from urllib.parse import urlsplit, urlunsplit

    from django.conf import settings

    from botmanager.celery import app

    def with_db(url: str) -> str:
        parts = urlsplit(url)
        return urlunsplit(parts._replace(path=f"/{settings.TEST_REDIS_DB}"))

    settings.REDIS_URL = with_db(settings.REDIS_URL)
    settings.CELERY_BROKER_URL = with_db(settings.CELERY_BROKER_URL)
    app.conf.broker_url = settings.CELERY_BROKER_URL


def pytest_unconfigure(config):
    if _started is not None:
        devstack.stop_services(_started)


@pytest.fixture(scope="session")
def django_db_setup(django_db_setup, django_db_blocker):
    """Meeting and user ids start at a random offset in each test run: Redis channels and keys
    carry them (a meeting's status channel, a user's event channel) and pub/sub ignores the
    database number, so two runs (or a run and `make run`) on one Redis server must not number
    their meetings or users alike."""
    import random

    from django.db import connection

    with django_db_blocker.unblock(), connection.cursor() as cursor:
        for table in ("meetings_meeting", "accounts_user"):
            cursor.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), %s)",
                           [random.randint(10**6, 2 * 10**9)])


@pytest.fixture
def api_user(db):
    from tests.factories import make_user

    return make_user()


@pytest.fixture
def api_client(api_user):
    from rest_framework.test import APIClient

    from tests.factories import make_token

    client = APIClient()
    client.credentials(HTTP_X_API_KEY=make_token(api_user))
    return client


@pytest.fixture
def redis_conn():
    from common.redis_client import get_redis

    return get_redis()


@pytest.fixture(autouse=True)
def _forget_engine_outages():
    """An engine one test made fail is not remembered as down by the next
    (orchestrators/request_listing.py keeps that per process)."""
    from orchestrators import request_listing

    request_listing.reset()
    yield
    request_listing.reset()


@pytest.fixture(autouse=True)
def _settle_past_the_other_workers_tests(settings):
    """The event log's settled position waits for every writing transaction of the PostgreSQL
    cluster older than the reader (meetings/events/log.py), and the other xdist worker's tests run
    inside one for as long as each runs: seconds, now and then. With the default two-second wait a
    stream's first frames then carried the start cursor instead of their own, and a test resuming
    from one saw the log again from its start. A test of the timeout sets its own wait."""
    settings.EVENTS_SETTLE_WAIT_SECONDS = 60
