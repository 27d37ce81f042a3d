"""Database connections of a gevent web worker: one per greenlet while it serves a client, kept
for the next client when that one goes.

Each client connection is a greenlet, and Django's connections must be greenlet-local (two
greenlets sharing one psycopg2 connection would interleave their queries). Opening one per
client connection, though, costs a TCP connect and a SCRAM authentication per bot callback
(bots send `Connection: close`): several times the callback's own work. So a greenlet that ends
hands its connections to the worker's idle list, and the next greenlet that needs one takes it
from there; only a connection that is unusable or past DB_CONN_MAX_AGE is closed
(`close_if_unusable_or_obsolete`, the check Django runs around every request). The number of
connections a worker holds is its peak number of concurrent clients that used the database,
never more (before this, finished clients' connections piled up until the garbage collector ran).
"""
from __future__ import annotations

import _thread

from asgiref.local import Local


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

