"""Each bot session's own Redis user: a bot can subscribe to its session's and its meeting's
command channels (meetings/bot_protocol/channels.py), run the transcription writes BOT_REDIS_GRANTS allows for
its own meeting, and nothing else. The service's password never reaches a bot.

- Created at launch, before the backend starts the bot (one ACL SETUSER), idempotent: a
  redelivered launch or the sweep sets the same rules again.
- Removed when the meeting ends (a post-meeting step, after commit); the orphan sweep removes this
  deployment's leftovers and re-creates the users of live sessions that Redis lost (ACL users live
  in memory: a Redis restart without an ACL file forgets them).
- The password is derived (HMAC of SECRET_KEY and the session uid), never stored: the sweep can
  re-create a user, and Redis only ever receives its SHA-256 (`#<hash>`).
- Usernames carry DEPLOYMENT_NAME (and REDIS_URL's database), so two deployments on one Redis
  never touch each other's users; the sweep lists them with one ACL USERS.
- Redis 7 and later: each grant is a selector (its command on its key or channel only). Redis 6.2
  has no selectors: the user holds the union of the grants' commands, keys and channels (docs/security.md,
  "Bot credentials"). Redis before 6.2 (no channel permissions) is refused.
Decision record: docs/decisions/0007-a-redis-acl-user-per-bot-session.md.
"""
from __future__ import annotations

import functools
import hashlib
import re
from dataclasses import dataclass
from urllib.parse import quote, urlsplit, urlunsplit

import redis
from django.conf import settings
from django.core import checks
from django.db import transaction
from django.utils.crypto import salted_hmac

from common.queues import QUEUES
from common.redis_client import get_redis
from meetings.bot_protocol import channels
from meetings.models import MeetingSession

PREFIX = "bm-bot"
MEETING_ID = "{meeting_id}"
MIN_VERSION = (6, 2)
# Commands a client sends to connect and stay connected (redis-py, node-redis: AUTH or HELLO,
# SELECT of the URL's database, CLIENT SETNAME/SETINFO, PING health checks), then the
# subscription itself. AUTH and HELLO run for every client anyway; INFO (ioredis' ready check) is
# not among them: it describes the whole server.
CONNECTION_COMMANDS = ("+auth", "+hello", "+ping", "+echo", "+select", "+reset",
                       "+client|setname", "+client|getname", "+client|id")
SUBSCRIBE_COMMANDS = ("+subscribe", "+unsubscribe", "+punsubscribe")
# What a grant may name: commands on one key (or PUBLISH on one channel). Anything else (scripts,
# KEYS/SCAN, admin commands, blocking reads of our queues) could reach beyond the grant's key.
KEY_COMMANDS = frozenset({"XADD", "XTRIM", "RPUSH", "LPUSH", "LTRIM", "SET", "GET", "DEL", "EXPIRE",
                          "PEXPIRE", "HSET", "SADD", "ZADD", "INCR", "INCRBY", "APPEND"})
CHANNEL_COMMANDS = frozenset({"PUBLISH"})
GLOB = re.compile(r"[*?\[\]\\\s]")


class CredentialsError(Exception):
    """The bot's Redis user could not be made; the message says what to do."""


@dataclass(frozen=True)
class Grant:
    command: str
    target: str  # a key, or a channel for PUBLISH; `{meeting_id}` is the bot's meeting

    @property
    def on_channel(self) -> bool:
        return self.command in CHANNEL_COMMANDS

    def for_meeting(self, meeting_id: int) -> str:
        return self.target.replace(MEETING_ID, str(int(meeting_id)))


def _ours(target: str) -> str | None:
    """Why `target` (a grant's key or channel) could be one of ours, or None."""
    if target.startswith(("bm:", "bot_commands", "_kombu", "unacked", "celery")):
        return "our keys and channels (bm:*, bot_commands:*) and the Celery broker's (_kombu*, unacked*, celery*)"
    if any(target == q or target.startswith((f"{q}.", f"{q}\x06")) for q in QUEUES):
        return f"the Celery queues ({', '.join(QUEUES)} and their per-instance queues)"
    return None


def parse_grants(text: str) -> list[Grant]:
    """BOT_REDIS_GRANTS: comma-separated `COMMAND target` pairs. Raises ValueError naming what is
    wrong: a command not allowed, a glob, a placeholder other than {meeting_id}, or a target that
    could be one of our keys, queues or channels."""
    grants = []
    for item in filter(None, (part.strip() for part in (text or "").split(","))):
        words = item.split()
        if len(words) != 2:
            raise ValueError(f"BOT_REDIS_GRANTS: {item!r} is not 'COMMAND target'")
        command, target = words[0].upper(), words[1]
        if command not in KEY_COMMANDS | CHANNEL_COMMANDS:
            raise ValueError(f"BOT_REDIS_GRANTS: {command} is not allowed to bots; allowed: "
                             f"{', '.join(sorted(KEY_COMMANDS | CHANNEL_COMMANDS))}")
        concrete = target.replace(MEETING_ID, "0")
        if GLOB.search(concrete) or "{" in concrete or "}" in concrete:
            raise ValueError(f"BOT_REDIS_GRANTS: {target!r} must name one key or channel: no glob "
                             f"(*?[]\\), no placeholder but {MEETING_ID}")
        why = _ours(concrete)
        if why:
            raise ValueError(f"BOT_REDIS_GRANTS: {target!r} could be one of {why}; bots never get those")
        grants.append(Grant(command, target))
    return grants


@functools.lru_cache(maxsize=8)
def _grants(text: str) -> tuple[Grant, ...]:
    return tuple(parse_grants(text))


def grant_problems(text: str) -> list[str]:
    try:
        parse_grants(text)
    except ValueError as exc:
        return [str(exc)]
    return []


# --- Names and secrets ----------------------------------------------------------------------------
def user_prefix() -> str:
    # Users are server-wide; our keys are the URL's database's. Both name the prefix, so neither
    # another deployment nor the tests (TEST_REDIS_DB) beside `make run` touch these users.
    db = urlsplit(settings.REDIS_URL).path.strip("/") or "0"
    return f"{PREFIX}.{settings.DEPLOYMENT_NAME}.db{db}."


def username(meeting_id: int, session_uid) -> str:
    # The session uid is a capability (it ends its meeting): the name carries a digest of it, so
    # `ACL USERS`, `CLIENT LIST` or the ACL log show no uid.
    tag = salted_hmac("meetings.launching.bot_credentials.username", str(session_uid), secret=settings.SECRET_KEY,
                      algorithm="sha256").hexdigest()[:24]
    return f"{user_prefix()}{int(meeting_id)}.{tag}"


def password(session_uid) -> str:
    # Derived, not stored: the sweep re-creates a lost user with the password its bot holds.
    return salted_hmac("meetings.launching.bot_credentials", str(session_uid), secret=settings.SECRET_KEY,
                       algorithm="sha256").hexdigest()


def bot_redis_url(meeting_id: int, session_uid) -> str:
    """The service's Redis URL (host, port, database, TLS) with the bot's user instead of ours."""
    parts = urlsplit(settings.REDIS_URL)
    host = parts.netloc.rpartition("@")[2]
    user = quote(username(meeting_id, session_uid), safe="")
    return urlunsplit(parts._replace(netloc=f"{user}:{password(session_uid)}@{host}"))


# --- Rules ----------------------------------------------------------------------------------------
def rules(meeting_id: int, session_uid, version: tuple[int, ...], grants=None) -> list[str]:
    """ACL SETUSER rules of one session's user on a Redis of `version`."""
    grants = _grants(settings.BOT_REDIS_GRANTS) if grants is None else grants
    digest = hashlib.sha256(password(session_uid).encode()).hexdigest()
    base = ["reset", "on", f"#{digest}", "resetkeys", "resetchannels", "nocommands", *CONNECTION_COMMANDS,
            *(("+client|setinfo",) if version >= (7, 2) else ()), *SUBSCRIBE_COMMANDS,
            f"&{channels.session_channel(str(session_uid))}", f"&{channels.meeting_channel(meeting_id)}"]
    if version >= (7, 0):
        selectors = [f"(+{g.command.lower()} {'&' if g.on_channel else '~'}{g.for_meeting(meeting_id)})"
                     for g in grants]
        return base + selectors
    union = sorted({f"+{g.command.lower()}" for g in grants})
    union += sorted({f"&{g.for_meeting(meeting_id)}" for g in grants if g.on_channel})
    union += sorted({f"~{g.for_meeting(meeting_id)}" for g in grants if not g.on_channel})
    return base + union


@functools.lru_cache(maxsize=1)
def server_version() -> tuple[int, ...]:
    """The Redis server's version, asked once per process."""
    raw = get_redis().info("server").get("redis_version", "0")
    return tuple(int(p) for p in re.findall(r"\d+", str(raw))[:3])


def _checked_version() -> tuple[int, ...]:
    version = server_version()
    if version < MIN_VERSION:
        shown = ".".join(map(str, version))
        raise CredentialsError(
            f"Redis {shown} cannot give bots their own credentials (ACL users with channel permissions "
            f"need Redis 6.2 or later); upgrade the Redis at REDIS_URL (docs/security.md, 'Bot credentials')")
    return version


# --- Effects --------------------------------------------------------------------------------------
def _checked_grants() -> tuple[Grant, ...]:
    try:
        return _grants(settings.BOT_REDIS_GRANTS)
    except ValueError as exc:
        raise CredentialsError(str(exc)) from None


def create(meeting_id: int, session_uid) -> None:
    """Create (or set again) the session's user: one round trip."""
    grants = _checked_grants()
    version = _checked_version()
    try:
        get_redis().execute_command("ACL", "SETUSER", username(meeting_id, session_uid),
                                    *rules(meeting_id, session_uid, version, grants))
    except redis.ResponseError as exc:
        raise CredentialsError(f"Redis refused to create the bot's user ({exc}): check BOT_REDIS_GRANTS, and "
                               f"that REDIS_URL's user may run ACL (docs/security.md, 'Bot credentials')") from None
    # Redis unreachable: raised as it is. The launch task fails, the meeting stays requested and
    # the sweep relaunches it once ORPHAN_GRACE_SECONDS have passed (a blip fails no meeting).


def remove(names: list[str]) -> int:
    """Delete these users (unknown ones are skipped by Redis); their connections are closed."""
    return int(get_redis().execute_command("ACL", "DELUSER", *names)) if names else 0


def remove_for(meeting_id: int, session_uids) -> int:
    return remove([username(meeting_id, uid) for uid in session_uids])


def restore(sessions: list[tuple[int, str]]) -> None:
    """Set again the users of these live sessions (one pipeline)."""
    if not sessions:
        return
    version = _checked_version()
    grants = _checked_grants()
    pipe = get_redis().pipeline(transaction=False)
    for meeting_id, uid in sessions:
        pipe.execute_command("ACL", "SETUSER", username(meeting_id, uid), *rules(meeting_id, uid, version, grants))
    pipe.execute()


def listed_users() -> set[str]:
    """This deployment's bot users on the server (one ACL USERS)."""
    prefix = user_prefix()
    return {name for name in get_redis().execute_command("ACL", "USERS") if name.startswith(prefix)}


def reconcile(listed: set[str], live: set[tuple[int, str]]) -> tuple[list[tuple[int, str]], list[str]]:
    """Pure: (live sessions without a user, users of no live session). `listed` must be read
    before `live`: a launch commits its session before creating its user, so a user listed then is
    one whose session the later read sees."""
    expected = {username(meeting_id, uid): (meeting_id, uid) for meeting_id, uid in live}
    restore_ = sorted(session for name, session in expected.items() if name not in listed)
    remove_ = sorted(name for name in listed if name not in expected)
    return restore_, remove_


# --- Hooks ----------------------------------------------------------------------------------------
def remove_after_meeting(meeting) -> None:
    """Post-meeting step (registered by meetings/apps.py): the ended meeting's bot users go once
    the post-meeting transaction commits. Exactly once with the step; if Redis is unreachable then,
    the sweep removes them."""

    uids = [str(uid) for uid in MeetingSession.objects.filter(meeting_id=meeting.id)
            .values_list("session_uid", flat=True)]
    if uids:
        meeting_id = meeting.id
        transaction.on_commit(lambda: remove_for(meeting_id, uids), robust=True)


def check_grants(app_configs=None, **kwargs):
    """System check: a BOT_REDIS_GRANTS that could reach one of our keys refuses the start."""

    return [checks.Error(problem, id="meetings.E001") for problem in grant_problems(settings.BOT_REDIS_GRANTS)]
