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


def pytest_unconfigure(config):
    if _started is not None:
        devstack.stop_services(_started)


@pytest.fixture
def redis_conn():
    from meetings.redis_client import get_redis

    return get_redis()
