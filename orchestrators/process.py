"""The local-process backend: every bot is a process group on this machine.

`start` launches a small supervisor (`orchestrators.process_runner`) in its own session; the
supervisor starts the bot command in a session (process group) of its own, records it and waits
for its exit code. The truth lives in files and in `/proc`, never in memory, so a restarted web or
worker process still lists and stops the bots an earlier one started:

    RUN_DIR/bots/proc-<12 hex>.json   the record (name, labels, command, pid, pgid, process start
                                      time, supervisor pid, created_at, exit code, stop request)
    RUN_DIR/bots/proc-<12 hex>.log    the bot's stdout and stderr, and the supervisor's notes

A bot inherits nothing of the service's environment (the worker's holds SECRET_KEY, DATABASE_URL,
REDIS_URL and whatever a deployment put there): the supervisor and the bot start with
`bot_environment()`, i.e. PATH, HOME, LANG, LANGUAGE, TZ, TMPDIR, LC_*, the names
PROCESS_BOT_ENV_PASS lists (`SIMBOT_*` by default), and BOT_CONFIG. With PROCESS_BOT_USER set (the
service running as root), the bot runs as that user; otherwise as the service's own user, who can
read RUN_DIR/secrets.json: this backend is for development and one trusted machine.

A pid counts as our bot only while `/proc/<pid>/stat` shows the recorded start time (else the pid
was reused) and a state other than zombie.

Status mapping (`NormalizedStatus`, raw status in brackets):
- Starting ["starting"]: recorded, the supervisor has not reported the bot's pid yet.
- Up ["running"]: the bot process is alive.
- Stopping ["stopping"]: alive, and `terminate` (or `kill`) has signalled it. ["exiting"]: the bot
  has ended and its supervisor, still alive, has not recorded the exit code yet.
- Exited ["exited (N)"]: the bot ended with exit code N, whatever N is: a non-zero exit is still
  "Exited" (as with Docker); the manager judges failure from the bot's callbacks and exit code.
  A bot killed by signal S reports 128 + S ["killed by SIGKILL (137)", SIGTERM 143].
- Exited ["gone (exit code unknown)"], exit_code None: the process is gone (or its pid now belongs
  to another process) but no exit code was recorded, e.g. the supervisor itself was killed.
- Failed ["failed: <why>"]: the bot never started (command not found, supervisor crashed, or a
  record stuck in "starting" for longer than the start timeout).
"""
from __future__ import annotations

import json
import logging
import os
import secrets
import select
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from fnmatch import fnmatchcase
from pathlib import Path

from orchestrators import process_state
from orchestrators.base import (LABEL_DEPLOYMENT, LABEL_MANAGED, BotInfo, BotSpec, NormalizedStatus,
                                NotOurBotError, OrchestratorError, is_ours)

log = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT_SECONDS = 15.0
# A record still "starting" after this long lost its supervisor before the bot started.
STALE_START_SECONDS = START_TIMEOUT_SECONDS + 15.0
KILL_WAIT_SECONDS = 5.0
# A stopped bot's supervisor runs at the lowest priority: on a busy host it records the exit late.
EXIT_CODE_WAIT_SECONDS = 5.0
POLL_SECONDS = 0.05
# The niceness of a bot being stopped (`_lowest_priority`).
LOWEST_PRIORITY = 19


# What a bot may inherit of the service's environment, whatever PROCESS_BOT_ENV_PASS says: what a
# program needs to find its binaries, its home, its locale and its time zone. Nothing secret.
BOT_BASE_ENV = ("PATH", "HOME", "LANG", "LANGUAGE", "TZ", "TMPDIR", "LC_*")


def bot_environment(environ, passed=()) -> dict[str, str]:
    """The environment a bot starts with: the variables of `environ` named by BOT_BASE_ENV or by
    `passed` (exact names, or patterns such as `SIMBOT_*`), and nothing else. BOT_CONFIG is added by
    the supervisor; a BOT_CONFIG of the service itself is never passed on."""
    patterns = [*BOT_BASE_ENV, *passed]
    return {name: value for name, value in environ.items()
            if name != "BOT_CONFIG" and any(fnmatchcase(name, pattern) for pattern in patterns)}


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _lowest_priority(record: dict) -> None:
    """Before a bot is told to stop: its process group and its supervisor get the lowest CPU
    priority (and their scheduler autogroups, where the kernel has them: autogroups share the CPU
    as equals whatever their processes' niceness). What a stopping bot still does, a stubborn
    one's last seconds, two hundred bots dying at once and their supervisors recording it, then
    cannot take the cores from the lifecycle workers finalizing their meetings or from the bots
    still starting and running. Best effort: a process that is gone or not ours is left alone."""
    for which, who in ((os.PRIO_PGRP, record.get("pgid")), (os.PRIO_PROCESS, record.get("supervisor_pid"))):
        if not who:
            continue
        try:
            os.setpriority(which, who, LOWEST_PRIORITY)
        except OSError:
            pass
    for pid in (record.get("pid"), record.get("supervisor_pid")):
        try:
            with open(f"/proc/{pid}/autogroup", "w") as autogroup:
                autogroup.write(str(LOWEST_PRIORITY))
        except OSError:
            pass


class ProcessOrchestrator:
    name = "process"

    def __init__(self, run_dir: Path | str, deployment: str, command: list[str] | None = None,
                 env_pass: list[str] | tuple[str, ...] = ("SIMBOT_*",), user: str = ""):
        self.bots_dir = Path(run_dir) / "bots"
        self.deployment = deployment
        self.command = command or [sys.executable, "-m", "simbot"]
        self.env_pass = tuple(env_pass)
        self.user = user

    def instance_id(self) -> str:
        # The bots of this backend are processes of this host, recorded under this directory.
        return f"process:{socket.gethostname()}:{self.bots_dir}"

    @classmethod
    def from_settings(cls, settings) -> ProcessOrchestrator:
        raw = settings.PROCESS_BOT_COMMAND.strip()
        return cls(run_dir=settings.RUN_DIR, deployment=settings.DEPLOYMENT_NAME,
                   command=shlex.split(raw) if raw else None,
                   env_pass=settings.PROCESS_BOT_ENV_PASS, user=settings.PROCESS_BOT_USER)

    # --- start ------------------------------------------------------------------------------------
    def start(self, spec: BotSpec) -> str:
        container_id = f"proc-{secrets.token_hex(6)}"
        path = process_state.record_path(self.bots_dir, container_id)
        log_file = process_state.log_path(self.bots_dir, container_id)
        record = {
            "container_id": container_id, "name": spec.name, "command": self.command,
            "labels": {**spec.labels, LABEL_MANAGED: "true", LABEL_DEPLOYMENT: self.deployment},
            "status": "starting", "created_at": _now().isoformat(), "log_path": str(log_file),
            "pid": None, "pgid": None, "proc_start_time": None, "exit_code": None,
            "user": self.user or None,
        }
        try:
            process_state.ensure_dir(self.bots_dir)
            process_state.write(path, record)
            with process_state.private_file(log_file, "ab") as log_handle:
                runner = subprocess.Popen(
                    [sys.executable, "-m", "orchestrators.process_runner", str(path)],
                    cwd=PROJECT_ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log_handle,
                    start_new_session=True, env=bot_environment(os.environ, self.env_pass))
        except OSError as exc:
            self._mark_failed(path, f"cannot launch the supervisor: {exc}")
            raise OrchestratorError(f"bot {spec.name}: cannot launch the supervisor: {exc}") from exc
        # BOT_CONFIG (it holds the meeting token) travels on the supervisor's stdin, never argv.
        answer = self._await_ready(runner, json.dumps(spec.config))
        # The supervisor stays our child until the bot exits; reap it then so it leaves no zombie.
        threading.Thread(target=runner.wait, name=f"reap-{container_id}", daemon=True).start()
        if answer != "ok":
            self._mark_failed(path, answer)
            raise OrchestratorError(f"bot {spec.name} failed to start: {answer} (log: {log_file})")
        log.info("bot %s started as %s", spec.name, container_id)
        return container_id

    def _await_ready(self, runner: subprocess.Popen, bot_config: str) -> str:
        """The supervisor's one-line answer: "ok" or why the bot did not start."""
        try:
            try:
                runner.stdin.write(bot_config.encode())
                runner.stdin.close()
            except BrokenPipeError:
                return "the supervisor exited before reading BOT_CONFIG"
            readable, _, _ = select.select([runner.stdout], [], [], START_TIMEOUT_SECONDS)
            if not readable:
                runner.kill()
                return f"the supervisor did not report within {START_TIMEOUT_SECONDS:.0f}s"
            line = runner.stdout.readline().decode(errors="replace").strip()
            return line or "the supervisor exited before starting the bot"
        finally:
            runner.stdout.close()

    def _mark_failed(self, path: Path, error: str) -> None:
        """Keep the failed attempt listed as Failed, unless the bot did get a pid after all."""
        with process_state.locked(path):
            record = process_state.read(path)
            if record is not None and record.get("pid") is None:
                record.update(status="failed", error=error)
                process_state.write(path, record)
        if record is not None and record.get("pid") is not None:
            self.kill(record["container_id"])

    # --- list / inspect ---------------------------------------------------------------------------
    def list(self) -> list[BotInfo]:
        try:
            names = sorted(entry.name for entry in self.bots_dir.iterdir())
        except FileNotFoundError:
            return []  # no bot was ever started with this RUN_DIR
        except OSError as exc:
            raise OrchestratorError(f"cannot read the process backend state {self.bots_dir}: {exc}") from exc
        bots = []
        for name in names:
            container_id = name.removesuffix(".json")
            if name.endswith(".json") and process_state.CONTAINER_ID_RE.match(container_id):
                record = self._read(container_id)
                if record is not None:
                    bots.append(self._info(record))
        return sorted(bots, key=lambda bot: bot.created_at or datetime.min.replace(tzinfo=timezone.utc))

    def inspect(self, container_id: str) -> BotInfo | None:
        record = self._read(container_id)
        return None if record is None else self._info(record)

    def _read(self, container_id: str, *, refuse: str = "") -> dict | None:
        """This deployment's record of the bot, or None (unknown id, removed, other deployment).
        With `refuse` (the verb of a stop or a removal), a record that exists but is not this
        deployment's raises NotOurBotError instead: its pid is never signalled."""
        if not process_state.CONTAINER_ID_RE.match(container_id or ""):
            return None
        path = process_state.record_path(self.bots_dir, container_id)
        try:
            record = process_state.read(path)
        except (OSError, ValueError) as exc:
            # An unreadable record means an unknown bot state, not "no bot".
            raise OrchestratorError(f"cannot read the bot record {path}: {exc}") from exc
        if record is None:
            return None
        if not is_ours(record.get("labels"), self.deployment):
            if refuse:
                raise NotOurBotError(f"Refusing to {refuse} {container_id!r}: its record in "
                                     f"{self.bots_dir} is not a bot of deployment {self.deployment!r}.")
            return None
        return record

    def _info(self, record: dict) -> BotInfo:
        status, raw = self._status(record)
        created_at = datetime.fromisoformat(record["created_at"]) if record.get("created_at") else None
        return BotInfo(container_id=record["container_id"], name=record["name"], status=status,
                       raw_status=raw, labels=dict(record["labels"]), created_at=created_at,
                       exit_code=record.get("exit_code") if status is NormalizedStatus.EXITED else None)

    def _status(self, record: dict) -> tuple[NormalizedStatus, str]:
        if record.get("status") == "failed":
            return NormalizedStatus.FAILED, f"failed: {record.get('error') or 'unknown error'}"
        if record.get("pid") is None:
            if self._age_seconds(record) < STALE_START_SECONDS:
                return NormalizedStatus.STARTING, "starting"
            return NormalizedStatus.FAILED, "failed: never started (the supervisor was lost)"
        if process_state.is_running(record["pid"], record.get("proc_start_time")):
            if record.get("stop_requested_at") or record.get("kill_requested_at"):
                return NormalizedStatus.STOPPING, "stopping"
            return NormalizedStatus.UP, "running"
        code = record.get("exit_code")
        if code is None and process_state.is_running(record.get("supervisor_pid"),
                                                     record.get("supervisor_start_time")):
            # The bot just ended and its supervisor (at the lowest priority once the bot was told
            # to stop) is about to record how: not "gone, exit code unknown" for those moments.
            return NormalizedStatus.STOPPING, "exiting"
        if code is None:
            return NormalizedStatus.EXITED, "gone (exit code unknown)"
        if record.get("signal"):
            return NormalizedStatus.EXITED, f"killed by {record['signal']} ({code})"
        return NormalizedStatus.EXITED, f"exited ({code})"

    @staticmethod
    def _age_seconds(record: dict) -> float:
        created = datetime.fromisoformat(record["created_at"])
        return (_now() - created).total_seconds()

    # --- stop / remove ----------------------------------------------------------------------------
    def terminate(self, container_id: str) -> None:
        """SIGTERM to the bot's process group, and return. A bot still starting is marked: its
        supervisor signals it as soon as it has a pid. A bot already gone gets its leftover
        children SIGKILLed (they must not outlive it)."""
        self._signal(container_id, signal.SIGTERM, mark="stop_requested_at", verb="terminate")

    def kill(self, container_id: str) -> None:
        """SIGKILL to the bot's process group, and return (the kernel does the rest at once)."""
        self._signal(container_id, signal.SIGKILL, mark="kill_requested_at", verb="kill")

    def _signal(self, container_id: str, signum: int, *, mark: str, verb: str) -> None:
        record = self._read(container_id, refuse=verb)
        if record is None or record.get("status") == "failed":
            return
        path = process_state.record_path(self.bots_dir, container_id)
        if record.get("pid") is None:
            # Starting: the supervisor reads the mark right after recording the pid and signals the
            # bot itself (process_runner), so a stop racing a start never leaves the bot running.
            record = process_state.update(path, **{mark: _now().isoformat()})
            if record is None or record.get("pid") is None:
                return
        elif not record.get(mark):
            process_state.update(path, **{mark: _now().isoformat()})
        if process_state.is_running(record["pid"], record.get("proc_start_time")):
            _lowest_priority(record)
            self._killpg(record["pgid"], signum)
        else:
            self._killpg(record["pgid"], signal.SIGKILL)  # leftovers of a bot that is gone

    def stop(self, container_id: str, timeout: float) -> None:
        """Blocking (scripts and tests only): SIGTERM, wait up to `timeout` seconds, SIGKILL,
        wait for the exit code. Unknown or already gone = stopped."""
        self._read(container_id, refuse="stop")
        record = self._await_pid(container_id)
        if record is None or not process_state.is_running(record["pid"], record.get("proc_start_time")):
            return
        path = process_state.record_path(self.bots_dir, container_id)
        self.terminate(container_id)
        if not self._wait_gone(record, timeout):
            log.warning("bot %s still running %.1fs after SIGTERM; sending SIGKILL", container_id, timeout)
            self.kill(container_id)
            if not self._wait_gone(record, KILL_WAIT_SECONDS):
                raise OrchestratorError(f"bot {container_id} (pid {record['pid']}) survived SIGKILL")
        self._killpg(record["pgid"], signal.SIGKILL)  # leftovers of a bot that is gone
        self._await_exit_code(path)

    @staticmethod
    def _await_exit_code(path: Path) -> None:
        """Give the supervisor a moment to record the exit code, so that an inspect right after
        stop() tells how the bot ended. A lost supervisor just leaves it unknown."""
        deadline = time.monotonic() + EXIT_CODE_WAIT_SECONDS
        while time.monotonic() < deadline:
            record = process_state.read(path)
            if record is None or record.get("exit_code") is not None:
                return
            time.sleep(POLL_SECONDS)

    def _await_pid(self, container_id: str) -> dict | None:
        """The record once it has a pid; a bot still starting elsewhere is waited for, so a stop
        that races a start does not leave the bot running."""
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while True:
            record = self._read(container_id)
            if record is None or record.get("pid") is not None:
                return record
            if record.get("status") == "failed" or time.monotonic() >= deadline \
                    or self._age_seconds(record) >= STALE_START_SECONDS:
                return None
            time.sleep(POLL_SECONDS)

    @staticmethod
    def _signal_group(record: dict, signum: int) -> None:
        # Checked right before signalling: a reused pid (different start time) is not our bot.
        if not process_state.is_running(record["pid"], record.get("proc_start_time")):
            return
        ProcessOrchestrator._killpg(record["pgid"], signum)

    @staticmethod
    def _killpg(pgid: int, signum: int) -> None:
        try:
            os.killpg(pgid, signum)
        except ProcessLookupError:
            pass  # the group is already empty: stopped
        except PermissionError as exc:
            raise OrchestratorError(f"not allowed to signal process group {pgid}: {exc}") from exc

    @staticmethod
    def _wait_gone(record: dict, seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while process_state.is_running(record["pid"], record.get("proc_start_time")):
            if time.monotonic() >= deadline:
                return False
            time.sleep(POLL_SECONDS)
        return True

    def remove(self, container_id: str) -> None:
        """Forget an exited bot: its record, lock and log. A running bot is refused (forgetting it
        would leave a process nobody lists); stop it first."""
        record = self._read(container_id, refuse="remove")
        if record is None:
            return
        status, raw = self._status(record)
        if status.is_running:
            raise OrchestratorError(f"bot {container_id} is {raw}; stop it before removing it")
        path = process_state.record_path(self.bots_dir, container_id)
        # Under the record's lock: a supervisor still recording the exit (it runs at the lowest
        # priority once its bot is stopped, so it can be slow) must not write the record back
        # after it was removed. It finds none and writes nothing (`process_state.update`).
        with process_state.locked(path):
            path.unlink(missing_ok=True)
            process_state.log_path(self.bots_dir, container_id).unlink(missing_ok=True)
        process_state.lock_path(path).unlink(missing_ok=True)
