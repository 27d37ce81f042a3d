"""Test session setup: real PostgreSQL and Redis.

With no DATABASE_URL / REDIS_URL, the embedded servers are started for the session (or reused
when `make run` already has them up) and the ones started here are stopped at the end.
"""
from __future__ import annotations

import pytest

from botmanager import devstack

_started: devstack.Started | None = None


def pytest_configure(config):
    global _started
    _started = devstack.ensure_services()
    # Tasks enqueued by tests must never reach the worker of a `make run` on the same Redis.
    from botmanager.celery import app

    app.conf.broker_url = _test_broker_url()


def _test_broker_url() -> str:
    from django.conf import settings

    base, _, _db = settings.CELERY_BROKER_URL.rpartition("/")
    return f"{base}/{settings.TEST_REDIS_DB}"


def pytest_unconfigure(config):
    if _started is not None:
        devstack.stop_services(_started)


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
    from meetings.redis_client import get_redis

    return get_redis()
