"""Whether the API keys of this worker's open event streams still authenticate.

A stream (meetings/events/stream.py) outlives the request that authenticated it, so its key is asked
about again while it is held: one background thread per worker process (a greenlet under the
gevent web workers) asks PostgreSQL every half heartbeat, in one query for all the worker's open
streams, which of their keys are still live (not revoked, their user active), on a connection it
closes after the question. A stream whose key is not live any more is marked; the stream sees the
mark at its next wake (every quarter heartbeat at most) and ends. So a revocation or a deactivation
ends the stream within ¾ of EVENT_STREAM_HEARTBEAT_SECONDS, and held streams still hold no
database connection.

Why a query per worker, not per stream: a connection per stream per heartbeat (its login hashes a
password, the server forks a backend) cost ≈ 4 ms of client CPU each, ≈ 27 a second for 400
streams. Why not a revocation notice on Redis: every way a key or a user changes (the API, the
admin, a shell's `update()`) would have to send it, and one lost notice would leave a stream open;
PostgreSQL holds the truth whichever way it was written.

A round that cannot ask the database marks every stream: it ends (nothing is lost, the client
resumes from its last id once its key authenticates again).
Decision record: docs/decisions/0014-event-stream-keys-checked-per-worker.md.
"""
from __future__ import annotations

import logging
import threading
import time

from django.conf import settings
from django.db import DatabaseError, connection

from accounts.services import live_token_hashes

log = logging.getLogger(__name__)

_lock = threading.Lock()
# Open streams of this process: stream token -> the hash of the key that opened it.
_open: dict[str, str] = {}
# Stream tokens whose key was found not live: their streams end.
_ended: set[str] = set()
_watcher: threading.Thread | None = None
# Set by `watch`: the watcher reads its interval again (it may have changed, as tests change it).
_wake = threading.Event()


def watch(stream_token: str, key_hash: str) -> None:
    """Ask about this stream's key from now on, until `forget`."""
    global _watcher
    with _lock:
        _open[stream_token] = key_hash
        if _watcher is None:
            _watcher = threading.Thread(target=_run, name="stream-keys", daemon=True)
            _watcher.start()
    _wake.set()


def forget(stream_token: str) -> None:
    with _lock:
        _open.pop(stream_token, None)
        _ended.discard(stream_token)


def ended(stream_token: str) -> bool:
    """Whether this stream's key was found not live: the stream must end."""
    return stream_token in _ended


def poll_seconds() -> float:
    """How long a stream may wait between two looks at `ended`."""
    return settings.EVENT_STREAM_HEARTBEAT_SECONDS / 4


def _run() -> None:
    """The watcher: a round every half heartbeat while streams are open; it stops with the last."""
    global _watcher
    try:
        _rounds()
    finally:
        with _lock:
            if _watcher is threading.current_thread():  # it died: the next `watch` starts another
                _watcher = None


def _rounds() -> None:
    global _watcher
    last = time.monotonic()
    while True:
        _wake.wait(max(last + _interval() - time.monotonic(), 0))
        _wake.clear()
        if time.monotonic() < last + _interval():
            continue  # woken by a new stream: wait out the interval as it is now
        last = time.monotonic()
        with _lock:
            if not _open:
                _watcher = None
                return
            streams = dict(_open)
        _round(streams)


def _interval() -> float:
    return settings.EVENT_STREAM_HEARTBEAT_SECONDS / 2


def _round(streams: dict[str, str]) -> None:
    try:
        live = live_token_hashes(set(streams.values()))
    except DatabaseError as exc:
        log.warning("event streams ended: their API keys could not be checked (%s)", exc)
        live = set()
    finally:
        connection.close()
    with _lock:
        _ended.update(token for token, key_hash in streams.items() if key_hash not in live and token in _open)
