"""What simbot is told: BOT_CONFIG, its SIMBOT_* environment knobs, and the fault list."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

KNOBS = frozenset({
    "ignore_leave", "no_exit_callback", "die_active", "duplicate_callbacks", "reorder_callbacks",
    "restart_new_session", "stuck_joining", "stuck_waiting_room", "fail_joining",
})
BOT_NAME_PREFIX = "simbot:"
REQUIRED = ("meeting_id", "connectionId", "redisUrl", "botManagerCallbackUrl")


class ConfigError(Exception):
    """BOT_CONFIG or a SIMBOT_* variable is unusable; the bot cannot start."""


@dataclass
class BotConfig:
    raw: dict
    meeting_id: int
    connection_id: str
    container_name: str
    token: str
    redis_url: str
    exited_url: str
    language: str | None
    task: str | None
    faults: frozenset[str]
    step_seconds: float
    die_after_seconds: float
    restart_after_seconds: float
    callback_retry_seconds: float

    def has(self, knob: str) -> bool:
        return knob in self.faults


def _float(environ, name: str, default: float) -> float:
    raw = environ.get(name, "")
    try:
        return default if raw == "" else float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number") from None


def parse_faults(*sources: str) -> frozenset[str]:
    """Comma-separated knob lists; an unknown knob is an error so a typo cannot pass silently."""
    knobs = {k.strip() for source in sources for k in source.split(",") if k.strip()}
    unknown = knobs - KNOBS
    if unknown:
        raise ConfigError(f"unknown simbot fault knob(s) {sorted(unknown)}; known: {sorted(KNOBS)}")
    return frozenset(knobs)


def callback_url(exited_url: str, name: str) -> str:
    """`<base>/bots/internal/callback/exited` → the same URL with `name` as the last segment."""
    parts = urlsplit(exited_url)
    base = parts.path.rsplit("/", 1)[0]
    return urlunsplit((parts.scheme, parts.netloc, f"{base}/{name}", parts.query, ""))


def load(environ=os.environ) -> BotConfig:
    raw_json = environ.get("BOT_CONFIG", "")
    if not raw_json:
        raise ConfigError("BOT_CONFIG is not set")
    try:
        raw = json.loads(raw_json)
    except ValueError as exc:
        raise ConfigError(f"BOT_CONFIG is not valid JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError("BOT_CONFIG must be a JSON object")
    missing = [key for key in REQUIRED if not raw.get(key)]
    if missing:
        raise ConfigError(f"BOT_CONFIG lacks {', '.join(missing)}")
    bot_name = str(raw.get("botName") or "")
    name_knobs = bot_name[len(BOT_NAME_PREFIX):] if bot_name.startswith(BOT_NAME_PREFIX) else ""
    try:
        meeting_id = int(raw["meeting_id"])
    except (TypeError, ValueError):
        raise ConfigError(f"BOT_CONFIG meeting_id {raw['meeting_id']!r} is not an integer") from None
    return BotConfig(
        raw=raw,
        meeting_id=meeting_id,
        connection_id=str(raw["connectionId"]),
        container_name=str(raw.get("container_name") or ""),
        token=str(raw.get("token") or ""),
        redis_url=str(raw["redisUrl"]),
        exited_url=str(raw["botManagerCallbackUrl"]),
        language=raw.get("language"),
        task=raw.get("task"),
        faults=parse_faults(environ.get("SIMBOT_FAULTS", ""), name_knobs),
        step_seconds=_float(environ, "SIMBOT_STEP_SECONDS", 0.3),
        die_after_seconds=_float(environ, "SIMBOT_DIE_AFTER_SECONDS", 1.0),
        restart_after_seconds=_float(environ, "SIMBOT_RESTART_AFTER_SECONDS", 1.0),
        callback_retry_seconds=_float(environ, "SIMBOT_CALLBACK_RETRY_SECONDS", 30.0),
    )


def redacted(raw: dict) -> dict:
    """BOT_CONFIG fit for a log line: the meeting token, the session uid (connectionId: a
    capability, it ends any meeting of its session) and any Redis password are hidden."""
    shown = dict(raw)
    for key in ("token", "connectionId"):
        if shown.get(key):
            shown[key] = "<redacted>"
    redis_url = urlsplit(str(shown.get("redisUrl") or ""))
    if redis_url.password:
        host = redis_url.hostname or ""
        if redis_url.port:
            host = f"{host}:{redis_url.port}"
        shown["redisUrl"] = urlunsplit(redis_url._replace(netloc=f"<redacted>@{host}"))
    return shown
