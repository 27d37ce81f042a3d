"""Waiting in tests: one poll (`wait_for`) and the positive barriers that a test asserting "nothing
happens" waits on first (the worker idle: `wait_worker_idle`; sweeps that ran: `wait_sweep_runs`),
so that no test stands a fixed sleep for either."""
from __future__ import annotations

import time

# Long enough for a loaded 2-core machine; only a failing test waits this long.
DEFAULT_TIMEOUT = 20.0


def wait_for(predicate, *, timeout: float = DEFAULT_TIMEOUT, interval: float = 0.05, what: str = "condition"):
    """Poll until `predicate()` is truthy and return its value; else fail naming what never
    happened and the last value seen."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}; last value: {value!r}")
        time.sleep(interval)


def wait_worker_idle(timeout: float = 15.0) -> None:
    """Wait until a Celery worker on the test broker has run every queued task: nothing waits in a
    queue and nothing delivered is unacknowledged (tasks are acknowledged after they ran:
    acks_late). Tasks with a countdown still ahead sit unacknowledged too, so this also waits for
    them: a test only calls it when every countdown it caused falls within `timeout`."""
    from tests.support import all_queues, broker_client

    broker = broker_client()
    wait_for(lambda: sum(broker.llen(q) for q in all_queues()) == 0 and broker.hlen("unacked") == 0,
             timeout=timeout, what="the worker to run every queued task")


def sweep_runs_completed() -> int:
    """How many sweep runs every worker on the test Redis has completed so far (the counter
    observability/metrics.py keeps for /metrics)."""
    from common.redis_client import get_redis
    from observability import metrics

    return int(get_redis().hget(metrics.REDIS_KEY, "sweep_runs_completed") or 0)


def wait_sweep_runs(count: int, *, timeout: float, what: str = "") -> None:
    """Wait until `count` more sweep runs have completed (a run is counted after it returned, so
    whatever it enqueued is in the broker): the barrier before asserting that a sweep did nothing."""
    start = sweep_runs_completed()
    wait_for(lambda: sweep_runs_completed() >= start + count, timeout=timeout, interval=0.1,
             what=f"{count} more completed sweep runs{what}")
