"""The local stack's generated secrets: `RUN_DIR/secrets.json`, mode 0600.

No known value may ever sign or authenticate anything, so `make run` (and anything else on the
local stack: `manage.py` in a second terminal, the tests) does not fall back to a constant: the
first process that needs a secret the environment does not give generates it here, and every later
process on the same RUN_DIR reads the same value. The file also holds the passwords of the
embedded PostgreSQL and Redis servers, which only ever listen with authentication.

Only the local stack uses this file (settings.py decides when: no DATABASE_URL / REDIS_URL). A
deployment sets SECRET_KEY, BOT_TOKEN_SECRET and ADMIN_API_TOKEN in its environment; the system
check (botmanager/checks.py) refuses to start without them.

Imports nothing from Django: settings.py reads it while it is being built.
"""
from __future__ import annotations

import fcntl
import json
import os
import secrets
from pathlib import Path

FILE_NAME = "secrets.json"
# name -> generator. Tokens are URL-safe (they go into URLs and headers unquoted).
GENERATED = {
    "SECRET_KEY": lambda: secrets.token_urlsafe(50),
    "BOT_TOKEN_SECRET": lambda: secrets.token_urlsafe(48),
    "ADMIN_API_TOKEN": lambda: "bm_admin_" + secrets.token_urlsafe(32),
    "EMBEDDED_POSTGRES_PASSWORD": lambda: secrets.token_urlsafe(24),
    "EMBEDDED_POSTGRES_SUPERUSER_PASSWORD": lambda: secrets.token_urlsafe(24),
    "EMBEDDED_REDIS_PASSWORD": lambda: secrets.token_urlsafe(24),
}


def path(run_dir: Path) -> Path:
    return Path(run_dir) / FILE_NAME


def load(run_dir: Path, *, create: bool) -> dict[str, str]:
    """The secrets of this RUN_DIR. With `create`, the file is made (0600) or completed with the
    values it lacks, under a lock so that processes starting together agree on one value."""
    file = path(run_dir)
    if not create:
        return _read(file)
    file.parent.mkdir(parents=True, exist_ok=True)
    current = _read(file)
    if all(current.get(name) for name in GENERATED):
        return current
    lock = os.open(str(file.with_name(FILE_NAME + ".lock")), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        current = _read(file)  # another process may have written it while we waited
        missing = {name: make() for name, make in GENERATED.items() if not current.get(name)}
        if missing:
            current = {**current, **missing}
            _write(file, current)
        return current
    finally:
        os.close(lock)


def _read(file: Path) -> dict[str, str]:
    try:
        data = json.loads(file.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise RuntimeError(f"{file} is unreadable ({exc}); remove it to have new secrets generated "
                           "(the embedded servers' data under the same directory then needs removing too)") from None
    return {k: v for k, v in data.items() if isinstance(v, str)} if isinstance(data, dict) else {}


def _write(file: Path, values: dict[str, str]) -> None:
    write_private(file, json.dumps(values, indent=1, sort_keys=True))


def write_private(file: Path, text: str) -> None:
    """Replace `file` with `text`, readable by this account only: created 0600 from the start (a
    secret is never readable by another account, not even briefly), fsynced, then renamed over."""
    tmp = file.with_name(f".{file.name}.{os.getpid()}.tmp")
    fd = os.open(str(tmp), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, file)
