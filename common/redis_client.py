"""Redis connection pools per process, built from the REDIS_URL setting: one for every command, and
one for held event streams' subscriptions."""
from __future__ import annotations

import functools

import redis
from django.conf import settings


@functools.lru_cache(maxsize=1)
def get_redis() -> redis.Redis:
    return redis.Redis.from_url(settings.REDIS_URL, decode_responses=True,
                                socket_timeout=5, socket_connect_timeout=5, health_check_interval=30)


@functools.lru_cache(maxsize=1)
def get_stream_redis() -> redis.Redis:
    """For event streams' subscriptions (meetings/events/stream.py): each holds a connection while
    its stream is open, so they have a pool of their own, as large as the streams a worker may
    hold. In the shared pool (redis-py's holds 100) they would take the connections callbacks
    publish with."""
    return redis.Redis.from_url(settings.REDIS_URL, decode_responses=True, socket_timeout=5,
                                socket_connect_timeout=5, health_check_interval=30,
                                max_connections=settings.EVENT_STREAMS_PER_WORKER)
