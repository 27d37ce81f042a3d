"""Per-user request rate limits: token buckets in Redis, shared by every web worker and host.

Each user API request takes one token from the user's bucket (`API_RATE_LIMIT_*`); `POST /bots`
also takes one from a tighter bucket of its own (`BOT_REQUEST_RATE_LIMIT_*`: a launch costs a
process or a container, a read costs a query). A request finding a bucket empty is refused with 429,
`Retry-After` (whole seconds, at least 1) and a JSON `detail` naming the limit; a refused request
takes no token, so a client that waits as told is served.

One round trip per request: one Lua script (EVALSHA; redis-py's `Script` loads it again when the
server answers NOSCRIPT, after a restart or a SCRIPT FLUSH) refills and takes from every bucket the
request uses, atomically, on Redis' own clock (`TIME`): the web hosts' clocks never matter.

Not limited: the bot callbacks (no user; a user's API burst never slows their bots' reports), the
admin API (the operator's token; what it does is not a tenant's share), health and metrics.

Redis unreachable (or slower than RATE_LIMIT_REDIS_TIMEOUT_SECONDS): the request is served unlimited
and a warning logged (at most once a minute per process). Failing closed would turn a Redis outage
into an outage of the whole API, reads from PostgreSQL included, for every tenant: the harm the
limit exists to prevent. The paths that need Redis answer 503 by themselves meanwhile.
Decision record: docs/decisions/0013-rate-limits-in-redis-failing-open.md.
"""
from __future__ import annotations

import functools
import logging
import math
import time
from dataclasses import dataclass

import redis
from django.conf import settings
from redis.exceptions import RedisError
from rest_framework.exceptions import Throttled
from rest_framework.throttling import BaseThrottle

log = logging.getLogger(__name__)

# KEYS: the buckets; ARGV: per bucket, its refill (tokens per second) and capacity. Takes a token
# from every bucket, or from none when one is empty. Returns {1} or {0, ms until the request would
# be served, the 1-based index of the bucket that refused longest}. A bucket never written is full;
# each expires once it would be full again (nothing to remember).
_TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local levels = {}
local wait, refused = 0, 0
for i, key in ipairs(KEYS) do
  local rate = tonumber(ARGV[2 * i - 1]) / 1000
  local burst = tonumber(ARGV[2 * i])
  local state = redis.call('HMGET', key, 'level', 'at')
  local level, at = tonumber(state[1]), tonumber(state[2])
  if level == nil or at == nil then
    level = burst
  else
    level = math.min(burst, level + math.max(0, now - at) * rate)
  end
  if level < 1 and (1 - level) / rate > wait then
    wait, refused = (1 - level) / rate, i
  end
  levels[i] = level
end
if refused > 0 then
  return {0, math.ceil(wait), refused}
end
for i, key in ipairs(KEYS) do
  local rate = tonumber(ARGV[2 * i - 1]) / 1000
  local level = levels[i] - 1
  redis.call('HSET', key, 'level', tostring(level), 'at', tostring(now))
  redis.call('PEXPIRE', key, math.ceil((tonumber(ARGV[2 * i]) - level) / rate) + 1000)
end
return {1}
"""


@dataclass(frozen=True)
class Bucket:
    name: str  # part of the Redis key
    per_second: float  # refill; 0: no limit
    burst: int  # capacity
    what: str  # how the limit reads in a refusal

    def describe(self) -> str:
        if self.per_second >= 1:
            rate = f"{self.per_second:g} {self.what} a second"
        else:
            rate = f"{self.per_second * 60:g} {self.what} a minute"
        return f"at most {rate} per user, in bursts of up to {self.burst}"


def api_bucket() -> Bucket:
    return Bucket("api", settings.API_RATE_LIMIT_PER_SECOND, settings.API_RATE_LIMIT_BURST, "API requests")


def bot_request_bucket() -> Bucket:
    return Bucket("bots", settings.BOT_REQUEST_RATE_LIMIT_PER_MINUTE / 60, settings.BOT_REQUEST_RATE_LIMIT_BURST,
                  "bot requests (POST /bots)")


@dataclass(frozen=True)
class Refusal:
    retry_after: int  # whole seconds, at least 1
    bucket: Bucket

    @property
    def detail(self) -> str:
        return f"Too many requests: {self.bucket.describe()}."


def key(user_id: int, bucket: Bucket) -> str:
    # The hash tag keeps one user's buckets in one slot of a Redis Cluster (one script, one slot).
    return f"bm:ratelimit:{{u{user_id}}}:{bucket.name}"


def take(user_id: int, buckets: list[Bucket]) -> Refusal | None:
    """Take one token from each of the user's `buckets` (those with a limit); None when the request
    may go on, else why not and for how long."""
    limited = [b for b in buckets if b.per_second > 0 and b.burst > 0]
    if not limited:
        return None
    args = [value for b in limited for value in (repr(float(b.per_second)), b.burst)]
    try:
        answer = _script(settings.REDIS_URL, settings.RATE_LIMIT_REDIS_TIMEOUT_SECONDS)(
            keys=[key(user_id, b) for b in limited], args=args)
    except RedisError as exc:
        _warn_unlimited(exc)
        return None
    if answer[0] == 1:
        return None
    return Refusal(retry_after=max(1, math.ceil(int(answer[1]) / 1000)), bucket=limited[int(answer[2]) - 1])


@functools.lru_cache(maxsize=4)
def _script(url: str, timeout: float):
    # A client of its own: a limiter that waits on a hung Redis as long as the other paths do (5 s)
    # would hold every request that long.
    client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout,
                                  health_check_interval=30)
    return client.register_script(_TAKE)


_last_warning = 0.0


def _warn_unlimited(exc: RedisError) -> None:
    global _last_warning
    now = time.monotonic()
    if now - _last_warning >= 60:
        _last_warning = now
        log.warning("rate limits not applied: Redis unavailable (%s); requests are served unlimited until it "
                    "answers again", exc.__class__.__name__)


class UserRateThrottle(BaseThrottle):
    """DRF's throttle hook (REST_FRAMEWORK DEFAULT_THROTTLE_CLASSES): every view of the user API. A
    view that sets `launches_bots = True` has its POSTs take from the bot-request bucket too; views
    that are not the user's (callbacks, admin API, health) set `throttle_classes = []`."""

    def allow_request(self, request, view) -> bool:
        user = request.user
        if user is None or not user.is_authenticated:
            return True
        buckets = [api_bucket()]
        if request.method == "POST" and getattr(view, "launches_bots", False):
            buckets.append(bot_request_bucket())
        refusal = take(user.pk, buckets)
        if refusal is None:
            return True
        # Raised here rather than through wait(): the detail names the limit that refused.
        raise Throttled(wait=refusal.retry_after, detail=refusal.detail)
