"""The supervisor of one local-process bot: `python -m orchestrators.process_runner <record>`.

`ProcessOrchestrator.start` runs it in a session of its own, feeds BOT_CONFIG on stdin and reads
one readiness line from stdout. It starts the bot command (from the record) in a new session, so
the bot and its children form one process group that `stop` can signal, records pid, process
group and process start time, answers `ok` (or `error: ...`), then waits for the bot and records
its exit code. Because it, not the worker that called `start`, waits for the bot, the exit code
survives a worker restart and the bot never lingers as the worker's zombie.
"""
from __future__ import annotations

import os
import pwd
import signal
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

from orchestrators import process_state


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()


def _exit_code(returncode: int) -> tuple[int, str | None]:
    """Killed by signal N → 128 + N, the shell and Docker convention (SIGKILL 137, SIGTERM 143)."""
    if returncode >= 0:
        return returncode, None
    return 128 - returncode, signal.Signals(-returncode).name


def _honour_stop_requested_while_starting(path: Path, pgid: int) -> None:
    """A terminate or kill that came while the bot had no pid only marked the record (the
    orchestrator returns at once, it never waits for a start): signal the new bot now."""
    record = process_state.read(path) or {}
    for mark, signum in (("kill_requested_at", signal.SIGKILL), ("stop_requested_at", signal.SIGTERM)):
        if record.get(mark):
            print(f"[process_runner] {mark.split('_')[0]} requested while starting: {signum.name}", flush=True)
            try:
                os.killpg(pgid, signum)
            except ProcessLookupError:
                pass
            return


def _as_user(name: str | None) -> dict:
    """Popen options that run the bot as `name` (PROCESS_BOT_USER), with its own groups only and
    its own HOME; none when unset. Needs the supervisor to run as root."""
    if not name:
        return {}
    try:
        account = pwd.getpwnam(name)
    except KeyError:
        raise OSError(f"PROCESS_BOT_USER {name!r} is not a user of this machine") from None
    if os.geteuid() != 0:
        raise OSError(f"PROCESS_BOT_USER {name!r} needs the service to run as root "
                      f"(it runs as uid {os.geteuid()}); unset it to run bots as the service's user")
    os.environ["HOME"] = account.pw_dir
    return {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}


def main(argv: list[str]) -> int:
    path = Path(argv[1])
    record = process_state.read(path)
    if record is None:
        print(f"error: no bot record at {path}", flush=True)
        return 1
    bot_config = sys.stdin.read()
    ready = os.fdopen(os.dup(1), "w")
    with open(record["log_path"], "ab", buffering=0) as log:
        # From here on our own output (tracebacks included) goes to the bot's log, not the pipe.
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        # The bot inherits the environment we got from the orchestrator (already cut down to
        # what a bot needs: process.bot_environment), plus its config.
        os.environ["BOT_CONFIG"] = bot_config
        try:
            bot = subprocess.Popen(record["command"], stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                   start_new_session=True, **_as_user(record.get("user")))
        except OSError as exc:
            error = f"cannot run {record['command']!r}: {exc}"
            process_state.update(path, status="failed", error=error, finished_at=_now())
            print(f"[process_runner] {error}", flush=True)
            ready.write(f"error: {error}\n")
            ready.close()
            return 1
        stat = process_state.proc_stat(bot.pid)
        own = process_state.proc_stat(os.getpid())
        process_state.update(path, status="running", pid=bot.pid, pgid=bot.pid,
                             proc_start_time=stat[1] if stat else None, supervisor_pid=os.getpid(),
                             supervisor_start_time=own[1] if own else None, started_at=_now())
        print(f"[process_runner] bot pid {bot.pid} started", flush=True)
        _honour_stop_requested_while_starting(path, bot.pid)
        ready.write("ok\n")
        ready.close()
        exit_code, killed_by = _exit_code(bot.wait())
        process_state.update(path, status="exited", exit_code=exit_code, signal=killed_by,
                             finished_at=_now())
        print(f"[process_runner] bot pid {bot.pid} exited with code {exit_code}"
              + (f" ({killed_by})" if killed_by else ""), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
