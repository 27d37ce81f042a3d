"""Survive a Redis broker outage while the worker holds unacknowledged messages.

Written for celery 5.7.0 with kombu 5.7.0 (both pinned exactly in requirements.txt). On them, a
worker holding a countdown (or running acks_late) task when Redis goes away dies at once with
`AttributeError("'NoneType' object has no attribute 'hostname'")`: a channel of an already detached
transport is closed a second time. The patch, applied in every process that loads the Celery app:
1. `Channel._connparams` on a detached transport raises Redis ConnectionError (which every cleanup
   path swallows) instead of AttributeError: the worker goes on to reconnect;
2. `QoS.restore_unacked` remembers the delivery tags it could not restore, and a consumer bootstep
   re-queues them as soon as the consumer is connected again (not after the visibility timeout);
3. celery's bootsteps tolerate the consumer's connection being None while it restarts.

Cause, alternatives and removal condition: docs/decisions/0001-broker-outage-patch.md. Remove it
once celery/kombu ship a fix (tests/test_broker_outage.py, without the patch, tells).
"""
from __future__ import annotations

import logging
import threading

from celery import bootsteps
from kombu.transport import redis as kredis

from patches import versions

WRITTEN_FOR = {"celery": ("5.7.0",), "kombu": ("5.7.0",)}
RECORD = "docs/decisions/0001-broker-outage-patch.md"

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


def check() -> None:
    versions.require("patches/broker_outage.py", RECORD, WRITTEN_FOR)


def apply(app) -> None:
    """Patch kombu's Redis transport and celery's bootsteps (once per process), and add the
    re-queueing bootstep to `app`'s consumer."""
    global _installed
    check()
    if _installed:
        return
    _installed = True
    _patch_kombu()
    _patch_celery_bootsteps()
    app.steps['consumer'].add(RestoreUnackedAfterReconnect)
