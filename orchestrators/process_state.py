"""Durable bookkeeping of the process backend, shared by the orchestrator (web and worker
processes) and the bot supervisor (`process_runner`): one JSON record per bot under
`RUN_DIR/bots/`, and what `/proc` says about a pid.

Records are replaced atomically (write a temp file, rename) so a reader never sees half a
record; read-modify-write updates hold a per-bot `flock` because the supervisor (exit code) and
a stopper (stop request) may write at the same time. Imports nothing from Django: the supervisor
runs without it.
"""
from __future__ import annotations

import fcntl
import json
import os
import re
from contextlib import contextmanager
from pathlib import Path

CONTAINER_ID_RE = re.compile(r"^proc-[0-9a-f]{12}$")


def record_path(bots_dir: Path, container_id: str) -> Path:
    return bots_dir / f"{container_id}.json"


def log_path(bots_dir: Path, container_id: str) -> Path:
    return bots_dir / f"{container_id}.log"


def lock_path(record: Path) -> Path:
    return record.with_suffix(".lock")


def ensure_dir(bots_dir: Path) -> None:
    """The state directory, 0700: records hold the bots' labels (the session uid, a capability)
    and the logs their output; no other local account may read them."""
    bots_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    if bots_dir.stat().st_mode & 0o077:
        bots_dir.chmod(0o700)  # made by an older version with the umask's mode


def private_file(path: Path, mode: str = "ab"):
    """Open `path` (created 0600 if new)."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if "a" in mode else os.O_TRUNC)
    return os.fdopen(os.open(str(path), flags, 0o600), mode)


def write(path: Path, record: dict) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with private_file(tmp, "w") as handle:
        json.dump(record, handle, indent=1, sort_keys=True)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def read(path: Path) -> dict | None:
    """The record, or None when there is none. A record that is not JSON raises ValueError."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    record = json.loads(text)
    if not isinstance(record, dict):
        raise ValueError(f"{path} does not hold a JSON object")
    return record


@contextmanager
def locked(path: Path):
    with private_file(lock_path(path), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def update(path: Path, **changes) -> dict | None:
    """Merge `changes` into the record; a removed record stays removed (returns None)."""
    with locked(path):
        record = read(path)
        if record is None:
            return None
        record.update(changes)
        write(path, record)
        return record


def proc_stat(pid: int) -> tuple[str, int] | None:
    """(state letter, start time in clock ticks since boot) of a pid, or None if it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name (field 2) is in parentheses and may itself hold spaces or parentheses.
    fields = raw[raw.rindex(")") + 2:].split()
    return fields[0], int(fields[19])  # fields 3 and 22 of proc(5)


def is_running(pid: int | None, start_time: int | None) -> bool:
    """Is this exact process still running? A different start time means the pid was reused by
    another process; a zombie (Z) or dead (X) task has finished even if nobody reaped it yet."""
    if not pid or start_time is None:
        return False
    stat = proc_stat(pid)
    return stat is not None and stat[1] == start_time and stat[0] not in ("Z", "X")
