"""A live event stream (`GET /events/stream`, Server-Sent Events): the log replayed from a cursor,
then the user's events as they are published after commit (meetings/events.py).

Nothing is lost at the hand-over: the stream subscribes to the user's channel (confirmed by Redis)
before it reads the log, so an event committed after the replay's read was published after the
subscription and comes from the channel; one committed before is in the replay; one in both is sent
once (the replay's positions are remembered).

Served by a gevent web worker, a held stream is a greenlet waiting on its Redis socket (redis-py
over the monkey-patched socket module): it costs no request place (the worker takes
EVENT_STREAMS_PER_WORKER streams on top of WEB_WORKER_CONNECTIONS requests) and holds no
PostgreSQL connection, closed after the replay. A client that went away is noticed at the next
write (at the latest the heartbeat) and its stream ends, releasing its places.
"""
from __future__ import annotations

import logging
import math
import time
import uuid
from typing import Iterator

import redis
from django.conf import settings
from django.db import connection

from . import events
from .errors import DomainError
from .redis_client import get_redis, get_stream_redis


log = logging.getLogger(__name__)


class TooManyStreams(DomainError):
    http_status = 429


class NoStreamPlace(DomainError):
    http_status = 503


REDIS_DOWN = "Live events need Redis, which is not answering; page GET /events meanwhile."

# Streams open in this worker process (greenlets of one thread: no lock needed).
_open_here = 0

# A user's streams: a sorted set of stream tokens scored by when each lapses unless refreshed
# (a worker killed mid-stream leaves its token to lapse). Taken atomically against the cap.
_TAKE = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[4]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[3])
redis.call('EXPIRE', KEYS[1], ARGV[5])
return 1
"""


def _places_key(user_id: int) -> str:
    return f"bm:user:{user_id}:streams"


def _lapse_seconds() -> float:
    return 3 * settings.EVENT_STREAM_HEARTBEAT_SECONDS + 5


class EventStream:
    """One stream: places taken and the channel subscribed when made (so a refusal or a Redis
    outage is an ordinary JSON answer); iterated for the body; closed by the response."""

    def __init__(self, user_id: int, after: int):
        global _open_here
        if settings.WEB_WORKER_CLASS != "gevent":
            raise NoStreamPlace("Event streams need the gevent web workers (WEB_WORKER_CLASS=gevent): a sync "
                                "worker would be held by the stream. Page GET /events instead.")
        if _open_here >= settings.EVENT_STREAMS_PER_WORKER:
            raise NoStreamPlace("This web worker holds as many event streams as it may; try again shortly.")
        self.user_id, self.after = user_id, after
        self.token = uuid.uuid4().hex
        self.redis = get_redis()
        now = time.time()
        try:
            taken = self.redis.eval(_TAKE, 1, _places_key(user_id), now, now + _lapse_seconds(), self.token,
                                    settings.EVENT_STREAMS_PER_USER, int(_lapse_seconds()) + 1)
        except redis.RedisError as exc:
            log.warning("event stream refused: Redis did not answer (%s)", exc)
            raise NoStreamPlace(REDIS_DOWN) from exc
        if not taken:
            # A place frees when a stream closes; one whose client vanished is noticed within a
            # heartbeat.
            raise TooManyStreams(f"You hold {settings.EVENT_STREAMS_PER_USER} event streams already "
                                 "(EVENT_STREAMS_PER_USER); close one first.",
                                 retry_after=max(1, math.ceil(settings.EVENT_STREAM_HEARTBEAT_SECONDS)))
        _open_here += 1
        self.closed = False
        self.pubsub = None
        try:
            self.pubsub = get_stream_redis().pubsub()
            self.pubsub.subscribe(events.user_channel(user_id))
            confirmation = self.pubsub.get_message(timeout=5)
            if not confirmation or confirmation["type"] != "subscribe":
                raise redis.ConnectionError(f"Redis did not confirm the subscription: {confirmation!r}")
        except redis.RedisError as exc:
            log.warning("event stream refused: Redis did not subscribe it (%s)", exc)
            self.close()
            raise NoStreamPlace(REDIS_DOWN) from exc
        except BaseException:
            self.close()
            raise
        self._body = self._frames()

    def __iter__(self):
        return self._body

    def _frames(self) -> Iterator[bytes]:
        yield b": stream open\n\n"  # the headers go out now, not with the first event
        # Up to here every event is final (meetings/events.py): an event there has its own cursor as
        # its `id:`. A later one (replayed or live) may still be preceded by one committing late,
        # so its `id:` is this cursor: a reconnect replays from here, late ones included, and the
        # client skips what it saw by the event id.
        resume = max(self.after, events.settled_position() or events.START)
        sent: set[int] = set()
        for event in events.replay(self.user_id, self.after, settings.EVENTS_PAGE_MAX):
            sent.add(event.position)
            yield self._frame(event, resume)
        # Nothing below touches the database: its connection is not held while the stream waits.
        connection.close()
        heartbeat = settings.EVENT_STREAM_HEARTBEAT_SECONDS
        quiet_since = held_since = time.monotonic()
        while True:
            message = self.pubsub.get_message(ignore_subscribe_messages=True,
                                              timeout=max(quiet_since + heartbeat - time.monotonic(), 0))
            if time.monotonic() - held_since >= heartbeat:  # the user's place, busy or quiet
                self.redis.zadd(_places_key(self.user_id), {self.token: time.time() + _lapse_seconds()}, xx=True)
                held_since = time.monotonic()
            if message is not None and message["type"] == "message":
                event = events.published(message["data"])
                if event.position in sent:
                    sent.discard(event.position)  # the replay sent it; it comes once at most
                    continue
                quiet_since = time.monotonic()
                yield self._frame(event, resume)
            elif time.monotonic() - quiet_since >= heartbeat:
                quiet_since = time.monotonic()
                yield b": heartbeat\n\n"

    def _frame(self, event: events.Event, resume: int) -> bytes:
        position = events.cursor(self.user_id, min(event.position, resume))
        data = (f'{{"id":"{event.id}","cursor":"{position}","event":"{event.type}",'
                f'"payload":{event.body}}}')
        return f"id: {position}\nevent: {event.type}\ndata: {data}\n\n".encode()

    def close(self) -> None:
        """The response is done (the client went away, or the server stops): free the places."""
        global _open_here
        if self.closed:
            return
        self.closed = True
        _open_here -= 1
        body = getattr(self, "_body", None)
        if body is not None:
            body.close()
        if self.pubsub is not None:
            self.pubsub.close()
        try:
            self.redis.zrem(_places_key(self.user_id), self.token)
        except redis.RedisError as exc:
            log.warning("event stream place of user %s not released (%s); it lapses within %.0f s",
                        self.user_id, exc, _lapse_seconds())
