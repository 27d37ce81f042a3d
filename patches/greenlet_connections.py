"""Database connections of a gevent web worker: one per greenlet while it serves a client, kept
for the next client when that one goes.

Written for Django 5.2 (it replaces `ConnectionHandler._connections` and sets a connection's
`_thread_ident`), gunicorn 27.0 (it wraps `GeventWorker.handle`) and gevent 26.9 (whose monkey-
patching makes `asgiref.local.Local` greenlet-local). django.db was imported by gunicorn's master
before gevent patched `threading`, so all of a worker's greenlets would otherwise share one
thread-local store, and one connection; and one new connection per client (bots send
`Connection: close`) costs more than the callback it serves. A worker holds as many connections
as its peak number of concurrent clients that used the database, never more.

Remove it when Django's connections are greenlet-local under gevent on their own, or its own pool
(psycopg 3) gives the same bound; context and consequences: docs/decisions/0003-greenlet-connections.md.
"""
from __future__ import annotations

import _thread

from asgiref.local import Local

from patches import versions

WRITTEN_FOR = {"Django": ("5.2.*",), "gunicorn": ("27.0.*",), "gevent": ("26.9.*",)}
RECORD = "docs/decisions/0003-greenlet-connections.md"


def check() -> None:
    versions.require("patches/greenlet_connections.py", RECORD, WRITTEN_FOR)


def apply(worker) -> None:
    """In a gevent worker, after gunicorn's monkey-patching and before its first client: Django's
    connections become greenlet-local, and each client connection that ends hands its database
    connections on to the next one."""
    check()
    from django.db import connections

    store = GreenletConnections(connections.thread_critical)
    connections._connections = store
    serve = worker.handle

    def handle(listener, client, addr):
        try:
            serve(listener, client, addr)
        finally:
            store.release(connections.settings)

    worker.handle = handle  # looked up when the worker starts serving, after post_worker_init


class GreenletConnections:
    """A drop-in for `ConnectionHandler._connections` (attribute per alias)."""

    def __init__(self, thread_critical: bool = False):
        object.__setattr__(self, "_local", Local(thread_critical))
        object.__setattr__(self, "_idle", {})

    def __getattr__(self, alias: str):
        local = object.__getattribute__(self, "_local")
        try:
            return getattr(local, alias)
        except AttributeError:
            idle = object.__getattribute__(self, "_idle").get(alias)
            if not idle:
                raise
        conn = idle.pop()
        # Django refuses a connection used from another thread than its creator's; under gevent a
        # greenlet is a thread to it. This greenlet is now its only user.
        conn._thread_ident = _thread.get_ident()
        setattr(local, alias, conn)
        return conn

    def __setattr__(self, alias: str, value) -> None:
        setattr(object.__getattribute__(self, "_local"), alias, value)

    def __delattr__(self, alias: str) -> None:
        delattr(object.__getattribute__(self, "_local"), alias)

    def release(self, aliases) -> None:
        """The current greenlet is done: its connections go idle, or closed when not reusable."""
        local = object.__getattribute__(self, "_local")
        idle = object.__getattribute__(self, "_idle")
        for alias in aliases:
            try:
                conn = getattr(local, alias)
            except AttributeError:
                continue
            delattr(local, alias)
            # Also closes one left in a transaction (its autocommit is off).
            conn.close_if_unusable_or_obsolete()
            if conn.connection is not None:
                idle.setdefault(alias, []).append(conn)

