"""What a second terminal needs to know about the `make run` of a RUN_DIR: `RUN_DIR/runstack.env`
(its settings, while it runs) and `RUN_DIR/credentials.env` (the logins it created).

`make run` may have been started with other ports (PORT, EMBEDDED_POSTGRES_PORT, ...) than the
defaults; a `manage.py` typed in another terminal, where nobody exported them, would look for the
servers on the default ports and fail. So while it runs, `make run` writes its effective
non-secret settings to `RUN_DIR/runstack.env` (KEY=value lines, shell syntax), and settings.py
takes from it what the environment does not give, but only while that very process is alive (its
pid and start time are in the file): a file left by a crashed run changes nothing. Secrets are
never written here (they are in RUN_DIR/secrets.json, 0600); a DATABASE_URL / REDIS_URL given to
`make run` holds a password, so the file only says that one was given.

Imports nothing from Django: settings.py reads it while it is being built.
"""
from __future__ import annotations

import os
from pathlib import Path

from devstack.secrets import write_private

FILE_NAME = "runstack.env"
CREDENTIALS_FILE = "credentials.env"
# The settings a second terminal must share with `make run` to reach its servers and its bots.
SHARED = ("PORT", "EMBEDDED_POSTGRES_PORT", "EMBEDDED_REDIS_PORT", "ORCHESTRATOR", "DEPLOYMENT_NAME")
PID, START = "RUNSTACK_PID", "RUNSTACK_START"
# Names of the URLs `make run` was given in its environment (not their values: they hold passwords).
EXTERNAL = "EXTERNAL_URLS"


def path(run_dir: Path) -> Path:
    return Path(run_dir) / FILE_NAME


def start_time(pid: int) -> int | None:
    """The process start time (clock ticks since boot): a pid plus its start time names one
    process, even after the pid is reused. None: no such process."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def write(run_dir: Path, values: dict[str, object], external_urls: list[str]) -> None:
    """Record the effective settings of this process (`make run`) as the running stack of run_dir."""
    pid = os.getpid()
    lines = ["# Written by `make run` (devstack/run.py) while it runs; removed when it stops.",
             "# manage.py and the tests on this RUN_DIR use these values unless their environment sets them.",
             f"{PID}={pid}", f"{START}={start_time(pid)}",
             *(f"{name}={values[name]}" for name in SHARED if name in values),
             f"{EXTERNAL}={','.join(external_urls)}", ""]
    file = path(run_dir)
    tmp = file.with_name(f".{FILE_NAME}.{pid}.tmp")
    tmp.write_text("\n".join(lines))
    tmp.replace(file)


def remove(run_dir: Path) -> None:
    """Forget the running stack, if the file is this process's own."""
    if read(run_dir).get(PID) == str(os.getpid()):
        path(run_dir).unlink(missing_ok=True)


def read(run_dir: Path) -> dict[str, str]:
    try:
        return _parse(path(run_dir).read_text())
    except OSError:
        return {}


def running(run_dir: Path) -> dict[str, str]:
    """The file's values when the `make run` that wrote it is still running, else {}."""
    values = read(run_dir)
    try:
        pid, start = int(values[PID]), int(values[START])
    except (KeyError, ValueError):
        return {}
    return values if start_time(pid) == start else {}


def shared_settings(run_dir: Path) -> dict[str, str]:
    """The settings of the running `make run` of run_dir that another process should share."""
    return {name: value for name, value in running(run_dir).items() if name in SHARED and value}


def _parse(text: str) -> dict[str, str]:
    values = {}
    for line in text.splitlines():
        name, sep, value = line.partition("=")
        if sep and not name.startswith("#"):
            values[name.strip()] = value.strip()
    return values


def read_credentials(run_dir: Path) -> dict[str, str]:
    try:
        return _parse((Path(run_dir) / CREDENTIALS_FILE).read_text())
    except OSError:
        return {}


def write_credentials(run_dir: Path, values: dict[str, str]) -> Path:
    """The demo user's API key and the Django admin login `make run` created, for the person who
    ran it (0600, like secrets.json): `. RUN_DIR/credentials.env` puts them in a shell. Values are
    e-mail addresses and URL-safe tokens, safe unquoted."""
    file = Path(run_dir) / CREDENTIALS_FILE
    write_private(file, "# Created by `make run` (devstack/run.py); `. this-file` in a shell sets them.\n"
                  + "".join(f"{name}={value}\n" for name, value in values.items()))
    return file


def unreachable_database(settings, exc: BaseException) -> str:
    """One line for a command that could not connect to PostgreSQL: where it looked, with which
    RUN_DIR, and what to do."""
    db = settings.DATABASES["default"]
    where = f"{db.get('HOST') or 'localhost'}:{db.get('PORT') or 5432}"
    reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0].rpartition("failed: ")[2]
    stack = running(settings.RUN_DIR)
    if not stack:
        situation = "where no `make run` is running"
        advice = ("Start the stack with `make run` (or `python -m devstack.servers start`), or export in this "
                  "terminal the RUN_DIR and EMBEDDED_POSTGRES_PORT (or DATABASE_URL) of the terminal running it.")
    elif settings.EMBEDDED_POSTGRES and "DATABASE_URL" in stack.get(EXTERNAL, ""):
        situation = f"whose `make run` (pid {stack[PID]}) was given a DATABASE_URL"
        advice = "Export the same DATABASE_URL in this terminal."
    elif settings.EMBEDDED_POSTGRES and stack.get("EMBEDDED_POSTGRES_PORT") != str(settings.EMBEDDED_POSTGRES_PORT):
        situation = (f"whose `make run` (pid {stack[PID]}) uses EMBEDDED_POSTGRES_PORT="
                     f"{stack.get('EMBEDDED_POSTGRES_PORT')} (this terminal exports {settings.EMBEDDED_POSTGRES_PORT})")
        advice = ("Unset EMBEDDED_POSTGRES_PORT in this terminal (the running `make run` supplies its ports), "
                  "or export the value of the terminal running it.")
    else:
        situation = f"whose `make run` (pid {stack[PID]}) does not answer there"
        advice = "Look at the terminal running it: it starts PostgreSQL again when it stops answering."
    return f"cannot reach PostgreSQL at {where} ({reason}) with RUN_DIR={settings.RUN_DIR}, {situation}. {advice}"
