"""Survive a Redis broker outage while the worker holds unacknowledged messages (celery 5.7.0 with
kombu 5.7.0; both pinned exactly in requirements.txt because this patches their internals).

The crash it prevents: when Redis goes away while a worker holds a countdown task (or a running
acks_late task), the worker dies at once with

    CRITICAL Unrecoverable error: AttributeError("'NoneType' object has no attribute 'hostname'")

Cause (celery 5.7.0, `Consumer.on_connection_error_after_connected`): it calls
`connection.collect()`, which detaches the transport (`transport.client = None`) after the default
channel's `close()` stopped half-way (kombu's `Channel.close` first drains the pending BRPOP, which
raises on the dead socket; kombu PR #1733), then `connection.close()`, which closes that channel
again; its `QoS.restore_unacked()` needs a new Redis pool, `Channel._connparams()` reads
`transport.client.hostname` and raises AttributeError, which `ignore_errors()` does not swallow.
celery 5.6.3 does not make the second close (it came with the fix of celery GH-9705, a hang on
reconnect); the same `_connparams` AttributeError was kombu issue #582. No fixed release exists
(celery 5.7.0 and kombu 5.7.0 are the newest on PyPI as of 2026-11-30).

The patch, installed by botmanager/celery.py in every process that loads the app:
1. `Channel._connparams` on a detached transport raises Redis ConnectionError (a connection error
   every cleanup path swallows) instead of AttributeError: the worker goes on to reconnect.
2. `QoS.restore_unacked`, when Redis is unreachable, remembers the delivery tags it could not
   restore; a consumer bootstep re-queues them (`QoS.restore_by_tag`: atomic, a no-op for a tag
   already restored or acknowledged) as soon as the consumer is connected again. So the countdown
   tasks held before the outage are back at once, not after the visibility timeout (an hour
   here), provided Redis kept its data (the embedded Redis runs with an append-only file).
3. celery's bootsteps tolerate the consumer's connection being None while it restarts (celery
   5.7.0 sets it to None first; closing Gossip then logged an AttributeError).

Remove it once celery/kombu ship a fix (tests/test_broker_outage.py tells whether one is needed).
"""
from __future__ import annotations

import logging
import threading

from celery import bootsteps
from kombu.transport import redis as kredis

logger = logging.getLogger(__name__)

_lock = threading.Lock()
_pending = {}          # unacked_key -> set(delivery_tags) not restored because Redis was unreachable
_installed = False


def _connection_errors():
    return kredis.get_redis_error_classes().connection_errors


def _guarded_connparams(orig_connparams):
    def _connparams(self, asynchronous=False):
        transport = self.connection
        if transport is None or transport.client is None:
            raise kredis.get_redis_ConnectionError()(
                'kombu transport already closed (Connection.collect); '
                'this channel cannot reconnect')
        return orig_connparams(self, asynchronous=asynchronous)
    return _connparams


def _patch_kombu():
    orig_restore_unacked = kredis.QoS.restore_unacked

    def restore_unacked(self, client=None):
        tags = list(self._delivered)
        try:
            return orig_restore_unacked(self, client)
        except _connection_errors() as exc:
            if tags:
                with _lock:
                    _pending.setdefault(self.unacked_key, set()).update(tags)
                logger.warning(
                    'Could not restore %d unacknowledged message(s) now (%r); '
                    'they will be restored once the broker connection is back.',
                    len(tags), exc)
            self._delivered.clear()
            raise

    kredis.Channel._connparams = _guarded_connparams(kredis.Channel._connparams)
    kredis.QoS.restore_unacked = restore_unacked


class RestoreUnackedAfterReconnect(bootsteps.StartStopStep):
    """Consumer bootstep: re-queue messages a lost connection held unacknowledged."""

    requires = ('celery.worker.consumer.tasks:Tasks',)

    def start(self, c):
        with _lock:
            if not _pending:
                return
            pending = {k: set(v) for k, v in _pending.items()}
        try:
            qos = c.connection.default_channel.qos
        except (AttributeError, *_connection_errors()):  # not connected (again) or not Redis
            return
        if not isinstance(qos, kredis.QoS):
            return
        tags = pending.get(qos.unacked_key) or set()
        done = 0
        for tag in tags:
            try:
                qos.restore_by_tag(tag, leftmost=True)
            except _connection_errors():
                break  # connection lost again: keep the rest for the next reconnect
            done += 1
            with _lock:
                _pending.get(qos.unacked_key, set()).discard(tag)
        with _lock:
            for k in [k for k, v in _pending.items() if not v]:
                del _pending[k]
        if done:
            logger.warning('Restored %d unacknowledged message(s) held when the '
                           'broker connection was lost.', done)


def _patch_celery_bootsteps():
    from types import SimpleNamespace

    import celery.bootsteps as cb
    from kombu.common import ignore_errors as orig_ignore_errors

    errors = kredis.get_redis_error_classes()
    placeholder = SimpleNamespace(connection_errors=errors.connection_errors,
                                  channel_errors=errors.channel_errors)

    def ignore_errors(conn, fun=None, *args, **kwargs):
        return orig_ignore_errors(placeholder if conn is None else conn, fun, *args, **kwargs)

    cb.ignore_errors = ignore_errors


def install(app) -> None:
    global _installed
    if _installed:
        return
    _installed = True
    _patch_kombu()
    _patch_celery_bootsteps()
    app.steps['consumer'].add(RestoreUnackedAfterReconnect)
