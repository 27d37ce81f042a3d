"""Listing the bots for a request (`GET /bots/status`, `/readyz`) without letting the engine hold
the web: a hung engine must answer 503 quickly and never tie up the workers bot callbacks need.

- One listing in flight per backend and process, run on a small pool: concurrent requests share
  it instead of each opening its own call to a hung engine.
- A request waits for it at most `wait` seconds (ORCHESTRATOR_REQUEST_TIMEOUT_SECONDS for
  /bots/status, READYZ_TIMEOUT_SECONDS for /readyz); the call itself keeps the backend's own
  ORCHESTRATOR_QUERY_TIMEOUT_SECONDS and ends on its own.
- An engine that failed or did not answer in time is remembered as down for
  ORCHESTRATOR_REQUEST_TIMEOUT_SECONDS: requests meanwhile answer at once with that error, without
  asking it again.
"""
from __future__ import annotations

import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor, TimeoutError as FutureTimeout

from django.conf import settings

from orchestrators.base import BotInfo, Orchestrator, OrchestratorError

_pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="request-listing")
_lock = threading.Lock()
_in_flight: dict[str, Future] = {}
_down_until: dict[str, tuple[float, str]] = {}  # backend name -> (monotonic deadline, why)


def list_bots(backend: Orchestrator, wait: float | None = None) -> list[BotInfo]:
    """`backend.list()` for a request: raises OrchestratorError at once while the engine is known
    to be down, or after `wait` seconds when it does not answer."""
    wait = settings.ORCHESTRATOR_REQUEST_TIMEOUT_SECONDS if wait is None else wait
    name = backend.name
    with _lock:
        down = _down_until.get(name)
        if down is not None and down[0] > time.monotonic():
            raise OrchestratorError(f"{down[1]} (not asked again for {settings.ORCHESTRATOR_REQUEST_TIMEOUT_SECONDS:g} s)")
        future = _in_flight.get(name)
        new = future is None
        if new:
            future = _pool.submit(backend.list)
            _in_flight[name] = future
    if new:  # outside the lock: a future already done runs its callback here, at once
        future.add_done_callback(lambda done: _finished(name, done))
    try:
        return future.result(timeout=wait)
    except FutureTimeout:
        why = f"the {name} engine did not answer within {wait:g} s"
        _mark_down(name, why)
        raise OrchestratorError(why) from None


def _finished(name: str, future: Future) -> None:
    with _lock:
        if _in_flight.get(name) is future:
            del _in_flight[name]
        error = future.exception()
        if error is None:
            _down_until.pop(name, None)
    if error is not None:
        _mark_down(name, str(error) if isinstance(error, OrchestratorError) else f"{type(error).__name__}: {error}")


def _mark_down(name: str, why: str) -> None:
    with _lock:
        _down_until[name] = (time.monotonic() + settings.ORCHESTRATOR_REQUEST_TIMEOUT_SECONDS, why)


def reset() -> None:
    """Forget what is remembered (tests)."""
    with _lock:
        _in_flight.clear()
        _down_until.clear()
