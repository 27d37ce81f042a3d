"""Structured logs: one JSON object per line (LOG_FORMAT=json).

Every record carries `ts`, `level`, `logger`, `message` and, when the code passed them with
`extra=`, the structured fields. The lifecycle's transition lines carry `meeting_id`,
`session_id` (the session row, never its uid: a capability), `source`, `from_status`, `to_status`, `applied` (and `reason` / `refusal`).

No secrets: a field whose name looks like a credential (`token`, `secret`, `password`,
`api_key`, `authorization`, `cookie`) is written as "[redacted]" whatever it holds, nested
dictionaries included, and `X-API-Key` / `Authorization: Bearer` values and JWTs that end up in a
message text are masked. Nothing in the service logs a credential on purpose; this is the net
under it.

The module is not called `logging.py` on purpose: a file of that name in a package shadows the
standard library's `logging` for anything run as a script from inside that directory.
"""
from __future__ import annotations

import json
import logging
import re
import traceback
from datetime import datetime, timezone

REDACTED = "[redacted]"
# The bot session uid (`session_uid`, `connection_id`, BOT_CONFIG's `connectionId`) is a capability too.
_SECRET_NAME = re.compile(r"token|secret|passw|api[-_]?key|authorization|cookie|credential|session_?uid|connection_?id",
                          re.IGNORECASE)
# Values that look like credentials wherever they appear in a message.
_SECRET_TEXT = [
    (re.compile(r"(?i)(x-api-key[\"']?\s*[:=]\s*[\"']?)[^\s\"',;]+"), r"\1" + REDACTED),
    (re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]+"), r"\1" + REDACTED),
    (re.compile(r"\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]+"), REDACTED),  # a JWT
]

# Attributes every LogRecord has: everything else on a record came from `extra=`.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "taskName"}


def redact(value, key: str = ""):
    """`value` with credential-named fields masked (recursively in dicts and lists)."""
    if key and _SECRET_NAME.search(key):
        return REDACTED if value not in (None, "") else value
    if isinstance(value, dict):
        return {k: redact(v, str(k)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact(v) for v in value]
    if isinstance(value, str):
        return redact_text(value)
    return value


def redact_text(text: str) -> str:
    for pattern, replacement in _SECRET_TEXT:
        text = pattern.sub(replacement, text)
    return text


def _jsonable(value):
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_jsonable(v) for v in value]
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": datetime.fromtimestamp(record.created, tz=timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": redact_text(record.getMessage()),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_") and key not in entry:
                entry[key] = redact(_jsonable(value), key)
        if record.exc_info:
            entry["exception"] = redact_text("".join(traceback.format_exception(*record.exc_info)).rstrip())
        elif record.exc_text:
            entry["exception"] = redact_text(record.exc_text)
        if record.stack_info:
            entry["stack"] = record.stack_info
        return json.dumps(entry, ensure_ascii=False, default=str)


class PlainFormatter(logging.Formatter):
    """The human format of `make run`, with the same message masking as the JSON one."""

    def format(self, record: logging.LogRecord) -> str:
        return redact_text(super().format(record))


def logging_config(log_format: str, level: str) -> dict:
    """The LOGGING dict of the settings (and of the Celery processes, which reuse it)."""
    if log_format not in ("json", "plain"):
        raise ValueError(f"LOG_FORMAT must be 'json' or 'plain', not {log_format!r}")
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            "plain": {"()": "observability.jsonlog.PlainFormatter",
                      "format": "%(asctime)s %(levelname)s %(name)s %(message)s"},
            "json": {"()": "observability.jsonlog.JsonFormatter"},
        },
        "handlers": {"console": {"class": "logging.StreamHandler", "formatter": log_format}},
        "root": {"handlers": ["console"], "level": level},
        "loggers": {"django.db.backends": {"level": "INFO"}},
    }
