"""Keeps `make run`'s processes running: a child that exits is logged and restarted with back-off,
and never takes the others down; the embedded servers are started again when they stop answering.

Why: a meeting-bot service outlives any one of its processes. A worker that crashes on a broker
outage, a Redis killed by the OOM killer or restarted for an upgrade must cost at most a restart
and a sweep interval, not the service (the sweep recovers whatever was lost in between).

Each child gets a parent-death signal (Linux `PR_SET_PDEATHSIG`): if the supervisor itself is
killed, its children get SIGTERM instead of living on as orphans. The pids of the running
children are kept in `RUN_DIR/runstack.pids` so a later run can find and stop what a crashed run
left behind (`stop_leftovers`).
"""
from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from devstack.stackinfo import start_time as _start_time

BACKOFF_FIRST = 1.0
BACKOFF_MAX = 30.0
# A child that ran this long before exiting starts again from the first back-off step.
HEALTHY_AFTER = 60.0
PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        pass


@dataclass
class Child:
    name: str
    argv: list[str]
    env: dict[str, str] | None = None
    proc: subprocess.Popen | None = None
    started_at: float = 0.0
    restarts: int = 0
    backoff: float = BACKOFF_FIRST
    due_at: float = 0.0  # when to start it (again)

    def start(self, now: float) -> None:
        self.proc = subprocess.Popen(self.argv, env=self.env, preexec_fn=_die_with_parent)
        self.started_at = now

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@dataclass
class Supervisor:
    run_dir: Path
    log: Callable[[str], None] = print
    children: list[Child] = field(default_factory=list)
    # Checks of servers the supervisor keeps up: (name, is_up, start); start raises on failure.
    servers: list[tuple[str, Callable[[], bool], Callable[[], object]]] = field(default_factory=list)
    server_check_every: float = 2.0
    _server_due: dict[str, float] = field(default_factory=dict)
    _server_backoff: dict[str, float] = field(default_factory=dict)
    _next_server_check: float = 0.0

    @property
    def pid_file(self) -> Path:
        return self.run_dir / "runstack.pids"

    def add(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> Child:
        child = Child(name, argv, env)
        self.children.append(child)
        return child

    def start_all(self) -> None:
        now = time.monotonic()
        for child in self.children:
            child.start(now)
        self._write_pids()

    def tick(self, now: float | None = None) -> None:
        """One round: restart children that exited (after their back-off), and servers that stopped
        answering."""
        now = time.monotonic() if now is None else now
        changed = False
        for child in self.children:
            if child.proc is not None and child.proc.poll() is not None:
                code = child.proc.returncode
                up_for = now - child.started_at
                if up_for >= HEALTHY_AFTER:
                    child.backoff = BACKOFF_FIRST
                child.due_at = now + child.backoff
                self.log(f"{child.name} exited with code {code} after {up_for:.0f} s; restarting it in "
                         f"{child.backoff:.0f} s (the other processes keep running)")
                child.backoff = min(BACKOFF_MAX, child.backoff * 2)
                child.proc = None
                changed = True
            if child.proc is None and now >= child.due_at:
                try:
                    child.start(now)
                except OSError as exc:
                    self.log(f"{child.name} could not be started: {exc}; trying again in {child.backoff:.0f} s")
                    child.due_at = now + child.backoff
                    child.backoff = min(BACKOFF_MAX, child.backoff * 2)
                    continue
                child.restarts += 1
                self.log(f"{child.name} restarted (pid {child.proc.pid}, restart #{child.restarts})")
                changed = True
        if changed:
            self._write_pids()
        if now >= self._next_server_check:
            self._next_server_check = now + self.server_check_every
            self._check_servers(now)

    def _check_servers(self, now: float) -> None:
        for name, is_up, start in self.servers:
            if is_up():
                self._server_backoff.pop(name, None)
                continue
            if now < self._server_due.get(name, 0.0):
                continue
            backoff = self._server_backoff.get(name, BACKOFF_FIRST)
            self.log(f"{name} is not answering; starting it again")
            try:
                start()
            except Exception as exc:  # reported; tried again after the back-off
                self.log(f"{name} did not start: {exc}; trying again in {backoff:.0f} s")
                self._server_due[name] = now + backoff
                self._server_backoff[name] = min(BACKOFF_MAX, backoff * 2)
            else:
                self.log(f"{name} is up again")

    def stop_all(self, timeout: float = 30.0) -> None:
        """SIGTERM every child, say which ones it is waiting for, SIGKILL what is left at the end."""
        running = [c for c in self.children if c.running]
        for child in running:
            child.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        next_report = time.monotonic() + 2.0
        while True:
            waiting = [c for c in running if c.proc.poll() is None]
            if not waiting:
                break
            now = time.monotonic()
            if now >= deadline:
                for child in waiting:
                    self.log(f"{child.name} did not stop within {timeout:.0f} s; killing it")
                    child.proc.kill()
                    child.proc.wait()
                break
            if now >= next_report:
                self.log("waiting for " + ", ".join(c.name for c in waiting)
                         + " to finish (workers hand their tasks back to the broker first)")
                next_report = now + 2.0
            time.sleep(0.1)
        self.pid_file.unlink(missing_ok=True)

    def _write_pids(self) -> None:
        pids = {c.name: {"pid": c.proc.pid, "start": _start_time(c.proc.pid), "argv0": c.argv[0]}
                for c in self.children if c.running}
        self.run_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.pid_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(pids))
        tmp.replace(self.pid_file)


def stop_leftovers(run_dir: Path, log: Callable[[str], None] = print, timeout: float = 15.0) -> list[str]:
    """Stop the processes a crashed earlier run of this RUN_DIR left (from its pid file), each only
    if it is still the very process that was recorded. Returns their names."""
    pid_file = run_dir / "runstack.pids"
    try:
        recorded = json.loads(pid_file.read_text())
    except (OSError, ValueError):
        return []
    alive = {name: entry["pid"] for name, entry in recorded.items()
             if entry.get("start") is not None and _start_time(entry["pid"]) == entry["start"]}
    for name, pid in alive.items():
        log(f"stopping {name} (pid {pid}) left running by an earlier run of {run_dir}")
        try:
            os.killpg(pid, signal.SIGTERM) if os.getpgid(pid) == pid else os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(_start_time(p) is not None for p in alive.values()):
        time.sleep(0.1)
    for name, pid in alive.items():
        if _start_time(pid) is not None:
            log(f"{name} (pid {pid}) did not stop; killing it")
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    pid_file.unlink(missing_ok=True)
    return list(alive)
