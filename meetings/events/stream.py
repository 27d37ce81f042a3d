"""A live event stream (`GET /events/stream`, Server-Sent Events): the log replayed from a cursor,
then the user's events as they are published after commit (meetings/events/log.py).

Nothing is lost at the hand-over: the stream subscribes to the user's channel (confirmed by Redis)
before it reads the log, so an event committed after the replay's read was published after the
subscription and comes from the channel; one committed before is in the replay; one in both is sent
once (the replay's positions are remembered).

Served by a gevent web worker, a held stream is a greenlet waiting on its Redis socket (redis-py
over the monkey-patched socket module): it costs no request place (the worker takes
EVENT_STREAMS_PER_WORKER streams on top of WEB_WORKER_CONNECTIONS requests) and holds no
PostgreSQL connection, closed after the replay. A client that went away is noticed at the next
write (at the latest the heartbeat) and its stream ends, releasing its places.

A stream is only as good as the key that opened it: while it is held, its worker asks PostgreSQL
whether that key still authenticates (meetings/events/stream_keys.py), and the stream ends within one
heartbeat of the key's revocation or its user's deactivation.

Places, so that a few users cannot take every one (each a sorted set of stream tokens in Redis,
over all workers and hosts): at most EVENT_STREAMS_PER_USER per user (429), EVENT_STREAMS_TOTAL in
all (503), and the last EVENT_STREAMS_RESERVED of those only for a user's first stream (429 for a
further one while the others are taken). Users holding many streams can fill the shared places;
the reserved ones still give one stream to each of that many other users.
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

from common.redis_client import get_redis, get_stream_redis
from meetings.events import log as events, stream_keys
from meetings.lifecycle.errors import DomainError

log = logging.getLogger(__name__)


class TooManyStreams(DomainError):
    http_status = 429


class NoStreamPlace(DomainError):
    http_status = 503


REDIS_DOWN = "Live events need Redis, which is not answering; page GET /events meanwhile."

# Streams open in this worker process (greenlets of one thread: no lock needed).
_open_here = 0

# A user's streams and all streams: sorted sets of stream tokens scored by when each lapses unless
# refreshed (a worker killed mid-stream leaves its token to lapse). Taken atomically against the
# caps: 1 taken; 0 the user's cap; -1 every place taken; -2 only reserved places left and the user
# holds a stream already.
_TAKE = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[1])
local mine = redis.call('ZCARD', KEYS[1])
if mine >= tonumber(ARGV[4]) then return 0 end
local all = redis.call('ZCARD', KEYS[2])
if all >= tonumber(ARGV[6]) then return -1 end
if mine > 0 and all >= tonumber(ARGV[6]) - tonumber(ARGV[7]) then return -2 end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[3])
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[3])
redis.call('EXPIRE', KEYS[1], ARGV[5])
redis.call('EXPIRE', KEYS[2], ARGV[5])
return 1
"""

ALL_PLACES_KEY = "bm:streams"


def _places_key(user_id: int) -> str:
    return f"bm:user:{user_id}:streams"


def _lapse_seconds() -> float:
    return 3 * settings.EVENT_STREAM_HEARTBEAT_SECONDS + 5


class EventStream:
    """One stream: places taken and the channel subscribed when made (so a refusal or a Redis
    outage is an ordinary JSON answer); iterated for the body; closed by the response."""

    def __init__(self, user_id: int, after: int, token_hash: str):
        global _open_here
        if settings.WEB_WORKER_CLASS != "gevent":
            raise NoStreamPlace("Event streams need the gevent web workers (WEB_WORKER_CLASS=gevent): a sync "
                                "worker would be held by the stream. Page GET /events instead.")
        if _open_here >= settings.EVENT_STREAMS_PER_WORKER:
            raise NoStreamPlace("This web worker holds as many event streams as it may; try again shortly.")
        # The key's hash, never the key: it is asked about while the stream is held (stream_keys).
        self.user_id, self.after, self.token_hash = user_id, after, token_hash
        self.token = uuid.uuid4().hex
        self.redis = get_redis()
        now = time.time()
        try:
            taken = self.redis.eval(_TAKE, 2, _places_key(user_id), ALL_PLACES_KEY, now, now + _lapse_seconds(),
                                    self.token, settings.EVENT_STREAMS_PER_USER, int(_lapse_seconds()) + 1,
                                    settings.EVENT_STREAMS_TOTAL, settings.EVENT_STREAMS_RESERVED)
        except redis.RedisError as exc:
            log.warning("event stream refused: Redis did not answer (%s)", exc)
            raise NoStreamPlace(REDIS_DOWN) from exc
        retry = max(1, math.ceil(settings.EVENT_STREAM_HEARTBEAT_SECONDS))
        if taken == 0:
            # A place frees when a stream closes; one whose client vanished is noticed within a
            # heartbeat.
            raise TooManyStreams(f"You hold {settings.EVENT_STREAMS_PER_USER} event streams already "
                                 "(EVENT_STREAMS_PER_USER); close one first.", retry_after=retry)
        if taken == -1:
            raise NoStreamPlace("Every event stream place of the service is taken (EVENT_STREAMS_TOTAL); try "
                                "again shortly, and page GET /events meanwhile.")
        if taken == -2:
            raise TooManyStreams("The service's shared event stream places are taken; the few left are kept for "
                                 "users without a stream (EVENT_STREAMS_RESERVED). Use the stream you hold, or "
                                 "close one and retry.", retry_after=retry)
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
        stream_keys.watch(self.token, token_hash)

    def __iter__(self):
        return self._body

    def _frames(self) -> Iterator[bytes]:
        yield b": stream open\n\n"  # the headers go out now, not with the first event
        # Up to here every event is final (meetings/events/log.py): an event there has its own cursor as
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
            # Woken at least every stream_keys.poll_seconds(), to see whether its key still holds.
            wait = min(max(quiet_since + heartbeat - time.monotonic(), 0), stream_keys.poll_seconds())
            message = self.pubsub.get_message(ignore_subscribe_messages=True, timeout=wait)
            if stream_keys.ended(self.token):
                yield b": closed: the API key was revoked or its user deactivated\n\n"
                return
            if time.monotonic() - held_since >= heartbeat:  # busy or quiet
                self._refresh_places()
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

    def _refresh_places(self) -> None:
        lapse = {self.token: time.time() + _lapse_seconds()}
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.zadd(_places_key(self.user_id), lapse, xx=True)
            pipe.zadd(ALL_PLACES_KEY, lapse, xx=True)
            pipe.execute()

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
        stream_keys.forget(self.token)
        body = getattr(self, "_body", None)
        if body is not None:
            body.close()
        if self.pubsub is not None:
            self.pubsub.close()
        try:
            with self.redis.pipeline(transaction=False) as pipe:
                pipe.zrem(_places_key(self.user_id), self.token)
                pipe.zrem(ALL_PLACES_KEY, self.token)
                pipe.execute()
        except redis.RedisError as exc:
            log.warning("event stream place of user %s not released (%s); it lapses within %.0f s",
                        self.user_id, exc, _lapse_seconds())
