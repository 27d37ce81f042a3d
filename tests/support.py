"""Small helpers shared by the tests: polling, and reading Redis pub/sub."""
from __future__ import annotations

import json
import time


def wait_for(predicate, timeout: float = 10.0, interval: float = 0.05, what: str = "condition"):
    """Poll until `predicate()` is truthy; return its value, or fail saying what never happened."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def subscribe(redis_conn, *channels):
    """A pub/sub connection subscribed (confirmed) to `channels`."""
    pubsub = redis_conn.pubsub()
    pubsub.subscribe(*channels)
    for _ in channels:
        assert pubsub.get_message(timeout=2)["type"] == "subscribe"
    return pubsub


def published(pubsub, timeout: float = 2.0) -> dict[str, list[dict]]:
    """Every message published on the subscribed channels, by channel, until `timeout` of silence
    (0.3 s after the first message); closes the subscription."""
    got: dict[str, list[dict]] = {}
    while (message := pubsub.get_message(timeout=timeout)) is not None:
        if message["type"] == "message":
            got.setdefault(message["channel"], []).append(json.loads(message["data"]))
        timeout = 0.3
    pubsub.close()
    return got
