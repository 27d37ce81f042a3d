"""Fixtures of the observability tests: an isolated Redis database for the metric counters."""
from __future__ import annotations

import pytest

from common.redis_client import get_redis
from meetings.stopping.reconcile import DECISIONS_KEY
from observability.metrics import LATENESS_KEY, REDIS_KEY, STATUS_TIME_KEY


@pytest.fixture
def metrics_redis(settings):
    """Points REDIS_URL at the tests' Redis database so the sweep counters of a `make run` on the
    same server are neither read nor touched; starts from empty counters."""
    base, _, _db = settings.REDIS_URL.rpartition("/")
    settings.REDIS_URL = f"{base}/{settings.TEST_REDIS_DB}"
    get_redis.cache_clear()
    get_redis().delete(REDIS_KEY, LATENESS_KEY, STATUS_TIME_KEY, DECISIONS_KEY)
    yield get_redis()
    get_redis().delete(REDIS_KEY, LATENESS_KEY, STATUS_TIME_KEY, DECISIONS_KEY)
    get_redis.cache_clear()
