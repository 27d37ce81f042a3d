"""The chaos harness, shared by `tests/chaos/test_chaos.py` and `python -m tests.chaos.run`.

It runs the service as real subprocesses against real PostgreSQL and Redis, with shortened
timings: gunicorn (web), two Celery workers, Celery beat (the sweep), the process backend, and
the simulated bot (`tests.chaos.bot`, simbot with per-meeting timings) with its fault knobs. It
requests N meetings through the user API with a random mix of bot behaviours, stops them at random
moments (some aimed at the moment the bot dies or restarts on its own), SIGKILLs one worker (its
whole process group) mid-run while countdown tasks are queued and starts a replacement, then
checks the product guarantee on what the database, the bot processes and the backend show:

- every meeting is terminal, and every non-terminal status was left within its bound (below);
- every applied transition is allowed by `meetings.lifecycle.statuses.TRANSITIONS` and starts where the
  previous applied one ended;
- post-meeting work ran exactly once per meeting (counted by `tests.chaos.poststep`, inside the
  post-meeting transaction);
- no bot outlived its meeting by more than a bound, and none is left running (backend listing and
  /proc);
- each meeting's final status is the one its scenario implies.

Bounds (seconds; D stop delay, G stop grace, T stop timeout, K the backend's SIGKILL wait, E its
exit-code wait, I sweep interval, O orphan grace, M margin for load and queueing):
    slack            = T + K + E + M    (a sweep or a stop step may have to kill a bot first)
    requested        ≤ REQUESTED_TIMEOUT + I + slack        after entering `requested`
    joining          ≤ JOINING_TIMEOUT + I + slack          after entering `joining`
    awaiting_adm.    ≤ AWAITING_ADMISSION_TIMEOUT + I + slack
    stopping         ≤ D + G + I + slack                    after entering `stopping`
    active           ≤ MAX_BOT_DURATION + I + slack         after entering `active`, and
                     ≤ O + I + slack   after max(entering `active`, the bot's death)
                     (only the `overstay` scenario is meant to reach MAX_BOT_DURATION)
    bot outliving its meeting ≤ I + slack                   after the meeting's end_time
"""
from __future__ import annotations

import json
import os
import random
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import requests

from orchestrators import process as process_backend
from tests.chaos import bot as chaos_bot
from tests.support import UNREACHED_RATE_LIMITS

PROJECT_ROOT = Path(__file__).resolve().parents[2]
TERMINAL = ("completed", "failed")


# --- Configuration --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Timings:
    stop_delay: float = 3.0
    stop_grace: float = 2.0
    stop_timeout: float = 2.0
    sweep_interval: float = 3.0
    orphan_grace: float = 3.0
    requested_timeout: float = 20.0
    joining_timeout: float = 8.0
    awaiting_timeout: float = 8.0
    # Well past every planned stop (at most ~9 s after `active`), so only `overstay` reaches it.
    max_bot_duration: float = 20.0
    # Load, queueing, process start-up on a busy 2-core machine.
    margin: float = 20.0

    def env(self) -> dict[str, str]:
        return {
            "BOT_STOP_DELAY_SECONDS": str(self.stop_delay),
            "BOT_STOP_GRACE_SECONDS": str(self.stop_grace),
            "BOT_STOP_TIMEOUT_SECONDS": str(self.stop_timeout),
            "ORPHAN_SWEEP_INTERVAL_SECONDS": str(self.sweep_interval),
            "ORPHAN_GRACE_SECONDS": str(self.orphan_grace),
            "REQUESTED_TIMEOUT_SECONDS": str(self.requested_timeout),
            "JOINING_TIMEOUT_SECONDS": str(self.joining_timeout),
            "AWAITING_ADMISSION_TIMEOUT_SECONDS": str(self.awaiting_timeout),
            "MAX_BOT_DURATION_SECONDS": str(self.max_bot_duration),
        }

    @property
    def slack(self) -> float:
        return (self.stop_timeout + process_backend.KILL_WAIT_SECONDS + process_backend.EXIT_CODE_WAIT_SECONDS
                + self.margin)

    def residency_bound(self, status: str) -> float | None:
        """How long a meeting may stay in `status` (None: no bound while its bot lives)."""
        return {
            "requested": self.requested_timeout + self.sweep_interval + self.slack,
            "joining": self.joining_timeout + self.sweep_interval + self.slack,
            "awaiting_admission": self.awaiting_timeout + self.sweep_interval + self.slack,
            "stopping": self.stop_delay + self.stop_grace + self.sweep_interval + self.slack,
            "active": self.max_bot_duration + self.sweep_interval + self.slack,
        }.get(status)

    @property
    def gone_bot_bound(self) -> float:
        return self.orphan_grace + self.sweep_interval + self.slack

    @property
    def bot_outlives_bound(self) -> float:
        return self.sweep_interval + self.slack


@dataclass
class ChaosConfig:
    count: int
    run_dir: Path
    database_url: str
    # The broker too: a Redis database of our own (None, or in use by others: a private server).
    redis_url: str | None
    seed: int = 0
    rate: float = 3.0  # POST /bots per second (in waves of `wave`)
    wave: int = 6
    workers: int = 2
    worker_concurrency: int = 4
    web_workers: int = 3
    kill_worker_at: float | None = 0.5  # fraction of the POSTs after which one worker is SIGKILLed
    # Wait (up to 30 s) until no launch is in flight before the kill; without it a launch the
    # killed worker held waits for the broker's visibility timeout (see the report).
    kill_drain: bool = True
    timings: Timings = field(default_factory=Timings)
    scenarios: tuple[str, ...] | None = None  # only these (default: all)
    log_level: str = "WARNING"
    # How long to wait, after the last POST, for everything to end (a failed check, not a hang).
    settle_seconds: float = 150.0


# --- Scenarios ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Scenario:
    name: str
    knobs: tuple[str, ...]
    weight: int
    # (stop kind, probability): when the user's stop is issued.
    stops: tuple[tuple[str, float], ...]
    # Final (status, completion reason | failure stage) when no user stop applied; None: the
    # meeting only ends because it is stopped.
    natural: tuple[str, str] | None = None
    # Sources allowed for the terminal transition when no user stop applied.
    natural_sources: frozenset[str] = frozenset()
    # Sources never allowed for the terminal transition (e.g. a bot that never reports its exit).
    never_sources: frozenset[str] = frozenset()


STOPPED = ("completed", "stopped")
_STOP_ANYTIME = (("after_post", 0.3), ("after_active", 0.7))
SCENARIOS: dict[str, Scenario] = {s.name: s for s in [
    Scenario("cooperative", (), 12, _STOP_ANYTIME),
    Scenario("ignore_leave", ("ignore_leave",), 12, _STOP_ANYTIME,
             never_sources=frozenset({"bot_callback"})),
    Scenario("no_exit_callback", ("no_exit_callback",), 12, _STOP_ANYTIME,
             never_sources=frozenset({"bot_callback"})),
    Scenario("die_active", ("die_active",), 14, (("none", 0.6), ("race_exit", 0.4)),
             natural=("failed", "active"), natural_sources=frozenset({"orphan_sweep"})),
    Scenario("duplicate_callbacks", ("duplicate_callbacks",), 10, _STOP_ANYTIME),
    Scenario("reorder_callbacks", ("reorder_callbacks",), 10, _STOP_ANYTIME),
    Scenario("restart_new_session", ("restart_new_session",), 10,
             (("after_restart", 0.6), ("race_restart", 0.4))),
    Scenario("stuck_joining", ("stuck_joining",), 9, (("none", 0.6), ("after_post", 0.4)),
             natural=("failed", "joining"), natural_sources=frozenset({"orphan_sweep"})),
    Scenario("stuck_waiting_room", ("stuck_waiting_room",), 9, (("none", 0.6), ("after_post", 0.4)),
             natural=("completed", "awaiting_admission_timeout"), natural_sources=frozenset({"orphan_sweep"})),
    Scenario("fail_joining", ("fail_joining",), 2, (("none", 1.0),),
             natural=("failed", "joining"), natural_sources=frozenset({"bot_callback"})),
    # A cooperative bot nobody stops: the sweep's maximum-duration stop ends it.
    Scenario("overstay", (), 4, (("none", 1.0),), natural=("completed", "max_duration")),
]}


@dataclass
class MeetingPlan:
    index: int
    scenario: str
    platform: str
    native_id: str
    stop: str
    stop_jitter: float
    post_at: float  # seconds after the start of the run
    meeting_id: int | None = None
    posted_at: float | None = None
    post_error: str | None = None
    start_time: float | None = None  # seen `active` (database time)
    stop_due: float | None = None
    stop_sent_at: float | None = None
    stop_answer: str | None = None
    done: bool = False

    @property
    def bot_name(self) -> str:
        knobs = SCENARIOS[self.scenario].knobs
        return "simbot:" + ",".join(knobs) if knobs else f"chaos {self.index}"


def make_plans(count: int, seed: int, rate: float, wave: int,
               scenarios: tuple[str, ...] | None = None) -> list[MeetingPlan]:
    rng = random.Random(seed)
    names = list(scenarios or [name for name, scenario in SCENARIOS.items() if scenario.weight])
    weights = [SCENARIOS[n].weight or 1 for n in names]
    # Every scenario at least once (when count allows), the rest drawn by weight.
    chosen = names[:count] + rng.choices(names, weights, k=max(0, count - len(names)))
    rng.shuffle(chosen)
    plans = []
    for index, name in enumerate(chosen):
        kinds, probs = zip(*SCENARIOS[name].stops)
        stop = rng.choices(kinds, probs)[0]
        platform = rng.choice(["google_meet", "teams", "zoom"])
        wave_start = (index // wave) * wave / rate
        plans.append(MeetingPlan(index=index, scenario=name, platform=platform,
                                 native_id=native_id(platform, index), stop=stop,
                                 stop_jitter=rng.random(), post_at=wave_start + rng.uniform(0, 1.0)))
    return sorted(plans, key=lambda p: p.post_at)


def native_id(platform: str, index: int) -> str:
    if platform == "teams":
        return str(1_000_000_000 + index)
    if platform == "zoom":
        return str(100_000_000 + index)
    letters = ""
    n = index
    for _ in range(10):
        n, r = divmod(n, 26)
        letters += "abcdefghijklmnopqrstuvwxyz"[r]
    return f"{letters[:3]}-{letters[3:7]}-{letters[7:]}"


def stop_delay_after(plan: MeetingPlan, anchor: str, seed: int) -> float | None:
    """Seconds from the anchor event ("posted" | "active") to the stop, or None (not this anchor)."""
    j = plan.stop_jitter
    if plan.stop == "after_post" and anchor == "posted":
        return 4.0 * j
    if anchor != "active" or plan.meeting_id is None:
        return None
    knobs = chaos_bot.timings(seed, plan.meeting_id)
    if plan.stop == "after_active":
        return 0.3 + 6.0 * j
    if plan.stop == "race_exit":
        return knobs["SIMBOT_DIE_AFTER_SECONDS"] - 0.4 + 0.8 * j
    if plan.stop == "after_restart":
        return knobs["SIMBOT_RESTART_AFTER_SECONDS"] + 1.0 + 3.0 * j
    if plan.stop == "race_restart":
        return knobs["SIMBOT_RESTART_AFTER_SECONDS"] - 0.3 + 0.8 * j
    return None


# --- Subprocesses ---------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen
    log: Path
    started_at: float


class Service:
    """web + workers + beat as subprocesses, each in a process group of its own."""

    def __init__(self, config: ChaosConfig, run_id: str):
        self.config = config
        self.run_id = run_id
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.logs = config.run_dir / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.events_file = config.run_dir / "bot-events.jsonl"
        self.procs: dict[str, Proc] = {}
        self.retired: list[Proc] = []
        self.bin = Path(sys.executable).parent

    def env(self) -> dict[str, str]:
        c = self.config
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST", "SIMBOT_"))}
        env.update(c.timings.env())
        env.update({
            "DJANGO_SETTINGS_MODULE": "botmanager.settings",
            "DATABASE_URL": c.database_url, "REDIS_URL": c.redis_url, "CELERY_BROKER_URL": c.redis_url,
            "RUN_DIR": str(c.run_dir), "ORCHESTRATOR": "process", "DEPLOYMENT_NAME": "chaos",
            "PROCESS_BOT_COMMAND": f"{shlex.quote(sys.executable)} -m tests.chaos.bot",
            "PROCESS_BOT_ENV_PASS": "SIMBOT_*,CHAOS_*",  # the chaos bot's seed and events file
            "PUBLIC_BASE_URL": self.base_url, "PORT": str(self.port),
            "DEFAULT_MAX_CONCURRENT_BOTS": "0", "LOG_LEVEL": c.log_level,
            "WEB_CONCURRENCY": str(c.web_workers), "CELERY_CONCURRENCY": str(c.worker_concurrency),
            "CHAOS_RUN_ID": self.run_id, "CHAOS_SEED": str(c.seed), "CHAOS_EVENTS_FILE": str(self.events_file),
            "PYTHONUNBUFFERED": "1",
            # One user drives every meeting of the run.
            **UNREACHED_RATE_LIMITS,
        })
        return env

    def _spawn(self, name: str, argv: list[str]) -> Proc:
        log = self.logs / f"{name}.log"
        with log.open("ab") as out:
            popen = subprocess.Popen(argv, cwd=PROJECT_ROOT, env=self.env(), stdin=subprocess.DEVNULL,
                                     stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        proc = Proc(name, popen, log, time.time())
        self.procs[name] = proc
        return proc

    def start_web(self) -> None:
        self._spawn("web", [str(self.bin / "gunicorn"), "botmanager.wsgi", "--bind", f"127.0.0.1:{self.port}",
                            "--workers", str(self.config.web_workers), "--timeout", "60",
                            "--graceful-timeout", "5", "--access-logfile", "-"])

    def start_worker(self, name: str) -> Proc:
        return self._spawn(name, [
            str(self.bin / "celery"), "-A", "botmanager", "worker", "--loglevel", self.config.log_level,
            "--concurrency", str(self.config.worker_concurrency), "--hostname", f"{name}-{self.run_id[:8]}@%h",
            "--include", "tests.chaos.poststep", "--without-gossip", "--without-mingle", "--without-heartbeat"])

    def start_beat(self) -> None:
        self._spawn("beat", [str(self.bin / "celery"), "-A", "botmanager", "beat", "--loglevel", "WARNING",
                             "--schedule", str(self.config.run_dir / "celerybeat-schedule")])

    def start(self) -> None:
        for attempt in range(3):
            self.start_web()
            try:
                self.wait_web()
                break
            except RuntimeError:
                # Another process may have taken the free port first: retry on a new one.
                proc = self.procs.pop("web")
                _signal_group(proc.popen.pid, signal.SIGKILL)
                proc.popen.wait(timeout=10)
                self.retired.append(proc)
                if attempt == 2:
                    raise
                self.port = free_port()
                self.base_url = f"http://127.0.0.1:{self.port}"
        for i in range(self.config.workers):
            self.start_worker(f"worker{i}")
        self.start_beat()

    def wait_web(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        web = self.procs["web"]
        while time.monotonic() < deadline:
            if web.popen.poll() is not None:
                raise RuntimeError(f"web exited with code {web.popen.returncode}:\n{self.tail(web)}")
            try:
                requests.get(self.base_url + "/meetings", timeout=2)
                return
            except requests.RequestException:
                time.sleep(0.2)
        raise RuntimeError(f"the web app did not answer on {self.base_url} within {timeout}s")

    def check_alive(self) -> None:
        for proc in self.procs.values():
            if proc.popen.poll() is not None:
                raise RuntimeError(f"{proc.name} exited with code {proc.popen.returncode}:\n{self.tail(proc)}")

    def procs_named(self, prefix: str) -> list[str]:
        return [name for name in self.procs if name.startswith(prefix)]

    def kill_worker(self, name: str) -> None:
        """SIGKILL the worker's whole process group (main process and pool), as a lost machine."""
        proc = self.procs.pop(name)
        try:
            os.killpg(proc.popen.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.popen.wait(timeout=10)
        self.retired.append(proc)

    def stop(self) -> None:
        procs = list(self.procs.values())
        for proc in procs:
            _signal_group(proc.popen.pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        for proc in procs:
            try:
                proc.popen.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for proc in procs + self.retired:
            _signal_group(proc.popen.pid, signal.SIGKILL)
            try:
                proc.popen.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass

    @staticmethod
    def tail(proc: Proc, lines: int = 40) -> str:
        try:
            text = proc.log.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join(text[-lines:])

    def tails(self, lines: int = 40) -> str:
        parts = []
        for proc in list(self.procs.values()) + self.retired:
            parts.append(f"----- {proc.name} ({proc.log}), last {lines} lines -----\n{self.tail(proc, lines)}")
        return "\n".join(parts)


def _signal_group(pgid: int, signum: int) -> None:
    try:
        os.killpg(pgid, signum)
    except (ProcessLookupError, PermissionError):
        pass


# --- Watching bot processes -----------------------------------------------------------------------
@dataclass
class SeenProcess:
    kind: str  # "bot" | "supervisor"
    meeting_id: int | None
    first_seen: float
    last_seen: float


def _proc_start(pid: str) -> str | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2:].split()
    return None if fields[0] in ("Z", "X") else fields[19]


def scan_processes(run_id: str, cache: dict | None = None) -> dict[tuple[str, str], tuple[str, int | None]]:
    """Our live (non-zombie) bots and bot supervisors: {(pid, start time): (kind, meeting id)}."""
    cache = {} if cache is None else cache
    marker = f"CHAOS_RUN_ID={run_id}".encode()
    found = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"tests.chaos.bot" in cmdline:
            kind = "bot"
        elif b"orchestrators.process_runner" in cmdline:
            kind = "supervisor"
        else:
            continue
        start = _proc_start(pid)
        if start is None:
            continue
        key = (pid, start)
        if key not in cache:
            try:
                environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if marker not in environ:
                cache[key] = None
                continue
            meeting_id = None
            for item in environ:
                if item.startswith(b"BOT_CONFIG="):
                    try:
                        meeting_id = int(json.loads(item[len(b"BOT_CONFIG="):]).get("meeting_id"))
                    except (ValueError, TypeError, AttributeError):
                        pass
            cache[key] = (kind, meeting_id)
        if cache[key] is not None:
            found[key] = cache[key]
    return found


class ProcessWatcher(threading.Thread):
    """Scans /proc a few times a second: when each meeting's bot was last seen alive."""

    def __init__(self, run_id: str, interval: float = 0.3):
        super().__init__(name="chaos-process-watcher", daemon=True)
        self.run_id = run_id
        self.interval = interval
        self.seen: dict[tuple[str, str], SeenProcess] = {}
        self._cache: dict = {}
        self._halt = threading.Event()
        self.lock = threading.Lock()

    def run(self) -> None:
        while not self._halt.is_set():
            now = time.time()
            found = scan_processes(self.run_id, self._cache)
            with self.lock:
                for key, (kind, meeting_id) in found.items():
                    entry = self.seen.get(key)
                    if entry is None:
                        self.seen[key] = SeenProcess(kind, meeting_id, now, now)
                    else:
                        entry.last_seen = now
            self._halt.wait(self.interval)

    def halt(self) -> None:
        self._halt.set()
        self.join(timeout=5)

    def bot_last_seen(self) -> dict[int, float]:
        result: dict[int, float] = {}
        with self.lock:
            for entry in self.seen.values():
                if entry.kind == "bot" and entry.meeting_id is not None:
                    result[entry.meeting_id] = max(result.get(entry.meeting_id, 0.0), entry.last_seen)
        return result


# --- The run --------------------------------------------------------------------------------------
@dataclass
class KillInfo:
    worker: str = ""
    at: float | None = None
    stopping_meetings: int = 0  # meetings in `stopping` at the kill
    scheduled: int = 0  # countdown tasks the killed worker held
    waited_for_launches: float = 0.0
    note: str = ""


@dataclass
class RunData:
    plans: list[MeetingPlan]
    meetings: dict[int, dict]
    transitions: dict[int, list[dict]]
    post_meeting_runs: Counter
    bot_events: dict[int, list[dict]]
    bot_last_seen: dict[int, float]
    leftovers: list[str]
    kill: KillInfo
    adopted: int  # bots the sweep adopted (their launch died after starting them), from the logs
    lost_tasks: Counter
    started_at: float
    posts_done_at: float
    ended_at: float
    timings: Timings
    errors: list[str]
    kill_planned: bool = False


class ChaosRun:
    def __init__(self, config: ChaosConfig, log=print):
        self.config = config
        self.log = log
        self.run_id = uuid.uuid4().hex
        self.service = Service(config, self.run_id)
        self.watcher = ProcessWatcher(self.run_id)
        self.plans = make_plans(config.count, config.seed, config.rate, config.wave, config.scenarios)
        self.kill = KillInfo()
        self.errors: list[str] = []
        self.http = requests.Session()
        self.http.mount("http://", requests.adapters.HTTPAdapter(pool_maxsize=16))

    # --- setup ------------------------------------------------------------------------------------
    def _prepare(self) -> None:
        from django.db import connection

        from accounts.models import User
        from accounts.services import issue_token
        from tests.chaos import postcount

        with connection.cursor() as cursor:
            cursor.execute(postcount.CREATE_SQL)
            cursor.execute(f"TRUNCATE {postcount.TABLE}")
            # Redis Pub/Sub channels are server-wide (not per database), and the command channels
            # are named by meeting id: meeting ids in a range of their own keep this run's leave
            # commands from reaching other runs' bots (and theirs from reaching ours).
            cursor.execute("SELECT pg_get_serial_sequence('meetings_meeting', 'id')")
            self._sequence = cursor.fetchone()[0]
            cursor.execute(f"SELECT last_value, is_called FROM {self._sequence}")
            self._sequence_was = cursor.fetchone()
            cursor.execute("SELECT setval(%s, %s)", [self._sequence, random.SystemRandom().randrange(10**9, 10**12)])
        user = User.objects.create_user(email=f"chaos-{self.run_id[:12]}@example.com", max_concurrent_bots=0)
        self.http.headers["X-API-Key"] = issue_token(user).token
        self.user_id = user.pk

    def restore(self) -> None:
        """Give the meeting id sequence back its value (the suite's database is shared)."""
        from django.db import connection

        if getattr(self, "_sequence_was", None):
            with connection.cursor() as cursor:
                cursor.execute("SELECT setval(%s, %s, %s)", [self._sequence, *self._sequence_was])

    def _redis(self):
        import redis

        return redis.Redis.from_url(self.config.redis_url, decode_responses=True)

    def lost_tasks(self, meeting_ids: set[int]) -> Counter:
        """This run's tasks still delivered-but-unacknowledged in the broker: held by the killed
        worker, Redis redelivers them only after the visibility timeout."""
        lost: Counter = Counter()
        for raw in self._redis().hvals("unacked"):
            try:
                message = json.loads(raw)[0]
                headers = message["headers"]
                args = headers.get("argsrepr", "")
                mid = int(args.strip("(),").split(",")[0]) if args.strip("(),") else None
            except (ValueError, KeyError, IndexError, TypeError):
                continue
            if mid in meeting_ids:
                lost[headers.get("task", "?")] += 1
        return lost

    # --- main loop --------------------------------------------------------------------------------
    def _choose_redis(self) -> None:
        """The broker must be ours alone: another consumer on the same Redis database would take
        our tasks (and act on another database). Without a Redis URL, or when the configured
        database already has clients, a private Redis server runs in the run directory."""
        import redis

        from devstack import servers as devstack

        if self.config.redis_url:
            client = redis.Redis.from_url(self.config.redis_url)
            db = client.connection_pool.connection_kwargs.get("db", 0)
            me = client.client_id()
            others = [f"{c['addr']} ({c['cmd']})" for c in client.client_list()
                      if int(c["db"]) == db and int(c["id"]) != me]
            client.close()
            if not others:
                return
            self.log(f"chaos: Redis database {db} is in use by {len(others)} other clients "
                     f"({', '.join(others[:3])}); using a private Redis server instead")
        for _ in range(3):
            port = free_port()
            if devstack.start_redis(self._private_redis_dir, port):
                self.private_redis = True
                self.config.redis_url = devstack.embedded_redis_url(port)
                return
        raise RuntimeError("could not start a private Redis server")

    @property
    def _private_redis_dir(self) -> Path:
        return self.config.run_dir / "private-redis"

    def run(self) -> RunData:
        self.private_redis = False
        self._choose_redis()
        self._prepare()
        self.service.start()
        self.watcher.start()
        pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="chaos-http")
        try:
            return self._run(pool)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
            self.watcher.halt()
            self.service.stop()
            self._kill_leftovers()
            self.restore()
            if self.private_redis:
                from devstack import servers as devstack

                devstack.stop_redis(self._private_redis_dir)

    def _run(self, pool: ThreadPoolExecutor) -> RunData:
        from meetings.models import Meeting

        c = self.config
        t0 = time.time()
        queue = list(self.plans)
        by_meeting: dict[int, MeetingPlan] = {}
        kill_after = None if c.kill_worker_at is None else max(1, int(len(self.plans) * c.kill_worker_at))
        kill_state = "armed" if kill_after is not None else "off"
        drain_started = 0.0
        posted = 0
        in_flight = set()
        next_poll = 0.0
        posts_done_at = None
        self.log(f"chaos: {len(self.plans)} meetings, web {self.service.base_url}, run dir {c.run_dir}")

        while True:
            now = time.time()
            # POSTs, paused while a worker kill is being prepared.
            while queue and not (kill_state == "draining" and c.kill_drain) and t0 + queue[0].post_at <= now:
                plan = queue.pop(0)
                in_flight.add(pool.submit(self._post, plan))
                posted += 1
                if kill_state == "armed" and posted >= kill_after:
                    kill_state, drain_started = "draining", now
            for future in [f for f in in_flight if f.done()]:
                in_flight.discard(future)
                plan = future.result()
                if plan.meeting_id is not None:
                    by_meeting[plan.meeting_id] = plan
            if not queue and not in_flight and posts_done_at is None:
                posts_done_at = now

            if now >= next_poll:
                next_poll = now + 0.25
                open_ids = [mid for mid, p in by_meeting.items() if not p.done]
                rows = Meeting.objects.filter(pk__in=open_ids).values_list("id", "status", "start_time")
                for mid, status, start_time in rows:
                    plan = by_meeting[mid]
                    if start_time is not None and plan.start_time is None:
                        plan.start_time = start_time.timestamp()
                        delay = stop_delay_after(plan, "active", c.seed)
                        if delay is not None and plan.stop_due is None:
                            plan.stop_due = plan.start_time + delay
                    if status in TERMINAL:
                        plan.done = True
                if kill_state == "draining":
                    kill_state = self._maybe_kill(Meeting, list(by_meeting), now - drain_started)

            for plan in by_meeting.values():
                if plan.stop_due is not None and plan.stop_sent_at is None and plan.stop_due <= now:
                    plan.stop_sent_at = now
                    in_flight.add(pool.submit(self._stop, plan))

            self.service.check_alive()
            waiting_stop = any(p.stop_due is not None and p.stop_sent_at is None and not p.done
                               for p in by_meeting.values())
            if posts_done_at is not None and not in_flight and not waiting_stop \
                    and all(p.done for p in by_meeting.values()):
                break
            if posts_done_at is not None and now - posts_done_at > c.settle_seconds:
                self.errors.append(f"not every meeting ended within {c.settle_seconds:.0f}s after the last POST")
                break
            time.sleep(0.05)

        self.log(f"chaos: all meetings ended {time.time() - t0:.1f}s after the start")
        self._wait_post_meeting(Meeting)
        self._wait_no_bots()
        ended = time.time()
        return self._collect(t0, posts_done_at or ended, ended)

    def _post(self, plan: MeetingPlan) -> MeetingPlan:
        try:
            response = self.http.post(self.service.base_url + "/bots", timeout=30, json={
                "platform": plan.platform, "native_meeting_id": plan.native_id, "bot_name": plan.bot_name})
        except requests.RequestException as exc:
            plan.post_error = f"POST /bots failed: {exc}"
            plan.done = True
            return plan
        if response.status_code != 201:
            plan.post_error = f"POST /bots answered {response.status_code}: {response.text[:300]}"
            plan.done = True
            return plan
        plan.meeting_id = response.json()["id"]
        plan.posted_at = time.time()
        delay = stop_delay_after(plan, "posted", self.config.seed)
        if delay is not None:
            plan.stop_due = plan.posted_at + delay
        return plan

    def _stop(self, plan: MeetingPlan) -> MeetingPlan:
        try:
            response = self.http.delete(f"{self.service.base_url}/bots/{plan.platform}/{plan.native_id}", timeout=30)
            plan.stop_answer = f"{response.status_code} {response.text[:200]}"
        except requests.RequestException as exc:
            plan.stop_answer = f"error: {exc}"
        return plan

    def _maybe_kill(self, Meeting, meeting_ids: list[int], waited: float) -> str:
        """SIGKILL the worker holding the most countdown tasks, once no launch is in flight (a
        launch held by a dead worker is redelivered only after the broker's visibility timeout).
        Gives up waiting for the ideal moment after 30 s."""
        if time.monotonic() < getattr(self, "_next_kill_check", 0.0):
            return "draining"
        self._next_kill_check = time.monotonic() + 1.0
        launching = Meeting.objects.filter(user_id=self.user_id, status="requested",
                                           bot_container_id__isnull=True).count()
        if launching and waited < 30 and self.config.kill_drain:
            return "draining"
        if not launching and waited < 30 and not self.config.kill_drain:
            return "draining"  # hunting for a moment when launches are in flight
        workers = self.service.procs_named("worker")
        if self.config.kill_drain:
            scheduled = self._per_worker("scheduled")
            name = max(workers, key=lambda w: (scheduled.get(w, 0), w == workers[0]))
            if scheduled.get(name, 0) < 2 and waited < 30:
                return "draining"
        else:
            # Aim at a worker that holds a launch (executing or reserved).
            launches = self._per_worker("active", "meetings.launch_bot", timeout=0.3)
            name = max(workers, key=lambda w: (launches.get(w, 0), w == workers[0]))
            scheduled = {}
        stopping = Meeting.objects.filter(pk__in=meeting_ids, status="stopping").count()
        self.kill = KillInfo(worker=name, at=time.time(), stopping_meetings=stopping,
                             scheduled=scheduled.get(name, 0), waited_for_launches=waited,
                             note="" if not launching else f"{launching} launches still pending")
        self.service.kill_worker(name)
        self.service.start_worker(f"{name}-restarted")
        self.log(f"chaos: SIGKILLed {name} holding {self.kill.scheduled} countdown tasks ({stopping} meetings "
                 f"stopping); started {name}-restarted")
        return "done"

    def _per_worker(self, what: str, task_name: str | None = None, timeout: float = 1.0) -> dict[str, int]:
        """How many tasks each of our workers holds, through Celery's remote control: `scheduled`
        (countdown tasks), `active` (executing), `reserved` (prefetched)."""
        from celery import Celery

        app = Celery("chaos-inspect", broker=self.config.redis_url)
        try:
            replies = getattr(app.control.inspect(timeout=timeout), what)() or {}
        except Exception as exc:  # an inspection failure only makes the choice blind
            self.log(f"chaos: could not inspect the workers: {exc}")
            replies = {}
        finally:
            app.close()
        counts = {}
        for hostname, tasks in replies.items():
            name = hostname.split("@")[0].removesuffix(f"-{self.run_id[:8]}")
            if task_name:
                tasks = [t for t in tasks if (t.get("request", t)).get("name") == task_name]
            counts[name] = len(tasks)
        return counts

    def _wait_post_meeting(self, Meeting) -> None:
        t = self.config.timings
        deadline = time.monotonic() + t.orphan_grace + 2 * t.sweep_interval + t.margin
        while time.monotonic() < deadline:
            if not Meeting.objects.filter(user_id=self.user_id, post_meeting_done_at__isnull=True).exists():
                return
            time.sleep(0.5)

    def _wait_no_bots(self) -> None:
        t = self.config.timings
        deadline = time.monotonic() + t.bot_outlives_bound
        while time.monotonic() < deadline:
            if not scan_processes(self.run_id) and not self._backend_running():
                return
            time.sleep(0.5)

    def _backend(self):
        return process_backend.ProcessOrchestrator(self.config.run_dir, "chaos", [sys.executable, "-m",
                                                                                   "tests.chaos.bot"])

    def _backend_running(self) -> list[str]:
        return [f"{b.container_id} ({b.name}, {b.raw_status})" for b in self._backend().list()
                if b.status.is_running]

    def _kill_leftovers(self) -> None:
        """Cleanup (also after a failure): no bot or supervisor of this run survives it."""
        for _ in range(3):
            found = scan_processes(self.run_id)
            if not found:
                return
            for pid, _start in found:
                try:
                    os.killpg(int(pid), signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    try:
                        os.kill(int(pid), signal.SIGKILL)
                    except (ProcessLookupError, PermissionError):
                        pass
            time.sleep(0.5)

    # --- collecting -------------------------------------------------------------------------------
    def _collect(self, t0: float, posts_done_at: float, ended: float) -> RunData:
        from django.db import connection

        from meetings.models import Meeting, MeetingTransition
        from tests.chaos import postcount

        ids = [p.meeting_id for p in self.plans if p.meeting_id is not None]
        meetings = {m["id"]: m for m in Meeting.objects.filter(pk__in=ids).values(
            "id", "status", "completion_reason", "failure_stage", "start_time", "end_time",
            "post_meeting_done_at", "bot_container_id", "stop_requested_at", "data")}
        transitions: dict[int, list[dict]] = defaultdict(list)
        for t in MeetingTransition.objects.filter(meeting_id__in=ids).order_by("id").values(
                "meeting_id", "from_status", "to_status", "source", "reason", "applied", "created_at",
                "completion_reason", "failure_stage", "metadata", "session_id"):
            transitions[t["meeting_id"]].append(t)
        with connection.cursor() as cursor:
            cursor.execute(f"SELECT meeting_id, count(*) FROM {postcount.TABLE} GROUP BY meeting_id")
            runs = Counter(dict(cursor.fetchall()))
        events: dict[int, list[dict]] = defaultdict(list)
        if self.service.events_file.exists():
            for line in self.service.events_file.read_text().splitlines():
                try:
                    event = json.loads(line)
                except ValueError:
                    continue
                events[event["meeting_id"]].append(event)
        leftovers = [f"pid {pid}: {kind} of meeting {mid}" for (pid, _), (kind, mid)
                     in scan_processes(self.run_id).items()]
        leftovers += [f"backend lists {b} as running" for b in self._backend_running()]
        lost = self.lost_tasks(set(ids))
        adopted = sum(p.log.read_text(errors="replace").count("had no recorded bot; adopted")
                      for p in list(self.service.procs.values()) + self.service.retired if p.name.startswith("worker"))
        return RunData(plans=self.plans, meetings=meetings, transitions=dict(transitions), post_meeting_runs=runs,
                       bot_events=dict(events), bot_last_seen=self.watcher.bot_last_seen(), leftovers=leftovers, adopted=adopted,
                       kill=self.kill, lost_tasks=lost, started_at=t0, posts_done_at=posts_done_at, ended_at=ended,
                       timings=self.config.timings, errors=list(self.errors),
                       kill_planned=self.config.kill_worker_at is not None)


# --- Verification ---------------------------------------------------------------------------------
@dataclass
class MeetingResult:
    plan: MeetingPlan
    final: tuple[str, str] | None
    last_source: str | None
    time_to_terminal: float | None
    failures: list[str]
    bot_outlived: float | None = None  # seconds the bot was seen alive after the meeting's end
    note: str = ""


def _ts(value) -> float | None:
    return value.timestamp() if isinstance(value, datetime) else None


def verify(data: RunData) -> tuple[list[MeetingResult], list[str]]:
    """Check every meeting; returns the per-meeting results and the run-wide failures."""
    from meetings.lifecycle.statuses import TRANSITIONS

    t = data.timings
    results = []
    run_failures = list(data.errors)
    for plan in data.plans:
        failures: list[str] = []
        if plan.post_error:
            results.append(MeetingResult(plan, None, None, None, [plan.post_error]))
            continue
        m = data.meetings.get(plan.meeting_id)
        if m is None:
            results.append(MeetingResult(plan, None, None, None, [f"meeting {plan.meeting_id} not found"]))
            continue
        history = data.transitions.get(plan.meeting_id, [])
        applied = [h for h in history if h["applied"]]
        status = m["status"]
        end = _ts(m["end_time"])

        # Terminal.
        if status not in TERMINAL:
            failures.append(f"not terminal: {status}")

        # Valid history: allowed by the table, each applied record starts where the previous ended.
        previous = ""
        for h in applied:
            if h["from_status"] != previous:
                failures.append(f"applied {h['from_status'] or '∅'} -> {h['to_status']} does not start where "
                                f"the previous ended ({previous or '∅'})")
            elif previous and h["to_status"] not in TRANSITIONS.get(previous, ()):
                failures.append(f"applied {previous} -> {h['to_status']} is not allowed")
            previous = h["to_status"]
        if applied and previous != status:
            failures.append(f"status {status} but the last applied transition went to {previous}")

        # A callback from an older session never moves the meeting once a newer one reported.
        sessions: list[int] = []
        for h in history:
            sid = h["session_id"]
            if sid is not None and sid not in sessions:
                sessions.append(sid)
            if h["applied"] and h["source"] == "bot_callback" and sid is not None and sid != sessions[-1]:
                failures.append(f"applied {h['from_status']} -> {h['to_status']} from session {sid}, older than "
                                f"session {sessions[-1]} that had already reported")

        # Residency bounds.
        exits = [e["t"] for e in data.bot_events.get(plan.meeting_id, []) if e["event"] == "exit"]
        gone_at = data.bot_last_seen.get(plan.meeting_id)
        if exits:
            gone_at = max(gone_at or 0.0, max(exits))
        for i, h in enumerate(applied):
            if h["to_status"] in TERMINAL:
                continue
            entered = h["created_at"].timestamp()
            left = applied[i + 1]["created_at"].timestamp() if i + 1 < len(applied) else data.ended_at
            bound = t.residency_bound(h["to_status"])
            if h["to_status"] == "active" and gone_at is not None and gone_at < left:
                bound = max(entered, gone_at) - entered + t.gone_bot_bound
            if bound is not None and left - entered > bound:
                failures.append(f"stayed {h['to_status']} {left - entered:.1f}s (bound {bound:.1f}s)")

        # Post-meeting exactly once.
        runs = data.post_meeting_runs.get(plan.meeting_id, 0)
        if m["post_meeting_done_at"] is None:
            failures.append("post-meeting work never ran (post_meeting_done_at empty)")
        if runs != 1:
            failures.append(f"post-meeting work ran {runs} times")

        # No bot outlived its meeting.
        seen = data.bot_last_seen.get(plan.meeting_id)
        outlived = None if end is None or seen is None else max(0.0, seen - end)
        if outlived is not None and outlived > t.bot_outlives_bound:
            failures.append(f"its bot still ran {outlived:.1f}s after the meeting ended "
                            f"(bound {t.bot_outlives_bound:.1f}s)")

        # Final status per scenario.
        scenario = SCENARIOS[plan.scenario]
        final = (status, m["completion_reason"] if status == "completed" else m["failure_stage"]) \
            if status in TERMINAL else None
        last_source = applied[-1]["source"] if applied else None
        # The first stop that applied decides the reason: the user's (stopped) or the sweep's
        # maximum-duration stop (max_duration).
        stops = [h for h in applied if h["from_status"] and (
            (h["source"] == "user" and h["to_status"] in ("stopping", "completed"))
            or (h["source"] == "orphan_sweep" and h["to_status"] == "stopping"))]
        user_stop = stops[:1]
        if stops and stops[0]["source"] == "orphan_sweep" and plan.scenario != "overstay":
            # Planned stops come within ~9 s of `active`, far from MAX_BOT_DURATION: reaching it
            # means nothing else ended the meeting (e.g. a dead bot the sweep cannot see).
            failures.append(f"reached the maximum bot duration (stop plan {plan.stop}: "
                            f"{plan.stop_answer or 'never sent'})")
        note = ""
        if final == ("failed", "requested") and last_source == "orphan_sweep" and not sessions \
                and m["bot_container_id"] is None and data.kill.note and data.kill.at is not None \
                and plan.posted_at is not None and plan.posted_at < data.kill.at:
            # The worker was killed while launches were still pending (it waited 30 s for them, or
            # the run kills without waiting):
            # a launch it held is redelivered only after the broker's visibility timeout, so the
            # requested timeout ends the meeting. The guarantee holds; the outcome is expected.
            note = "launch lost with the killed worker"
        elif final is not None:
            if user_stop:
                expected = STOPPED if user_stop[0]["source"] == "user" else ("completed", "max_duration")
                sources = None
            elif scenario.natural is not None:
                expected, sources = scenario.natural, scenario.natural_sources
            else:
                expected, sources = None, None
                failures.append(f"ended {final[0]}/{final[1]} without a stop; scenario {plan.scenario} only ends "
                                f"when stopped (stop plan {plan.stop}: {plan.stop_answer or 'never sent'})")
            if expected is not None and final != expected:
                failures.append(f"ended {final[0]}/{final[1]}, expected {expected[0]}/{expected[1]}")
            if sources and last_source not in sources:
                failures.append(f"ended by {last_source}, expected {'/'.join(sorted(sources))}")
            if last_source in scenario.never_sources:
                failures.append(f"ended by {last_source}, which this scenario's bot never does")

        results.append(MeetingResult(plan, final, last_source, _time_to_terminal(plan, m, applied, data, t),
                                     failures, outlived, note))

    if data.leftovers:
        run_failures.append("bot processes left running: " + "; ".join(data.leftovers[:20]))
    if data.kill_planned and data.kill.at is None:
        run_failures.append("the planned worker kill never happened")
    return results, run_failures


def _time_to_terminal(plan: MeetingPlan, m: dict, applied: list[dict], data: RunData, t: Timings) -> float | None:
    """From the earliest trigger (the user's stop, the bot's death or failure, the timeout of a
    stuck status) to the meeting's end."""
    end = _ts(m["end_time"])
    if end is None:
        return None
    triggers = [h["created_at"].timestamp() for h in applied if h["source"] == "user" and h["from_status"]]
    triggers += [e["t"] for e in data.bot_events.get(plan.meeting_id, [])
                 if e["event"] == "exit" and e.get("code") not in (0, None)]
    timeouts = {"requested": t.requested_timeout, "joining": t.joining_timeout,
                "awaiting_admission": t.awaiting_timeout}
    for i, h in enumerate(applied):
        if h["to_status"] in timeouts:
            due = h["created_at"].timestamp() + timeouts[h["to_status"]]
            left = applied[i + 1]["created_at"].timestamp() if i + 1 < len(applied) else end
            if left >= due:
                triggers.append(due)
    if plan.scenario == "overstay" and m["start_time"] is not None:
        triggers.append(m["start_time"].timestamp() + t.max_bot_duration)
    return max(0.0, end - min(triggers)) if triggers else None


# --- Reporting ------------------------------------------------------------------------------------
def _pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def report(data: RunData, results: list[MeetingResult], run_failures: list[str]) -> str:
    lines = []
    by_scenario: dict[str, list[MeetingResult]] = defaultdict(list)
    for r in results:
        by_scenario[r.plan.scenario].append(r)
    header = (f"{'scenario':<21} {'n':>4}  {'p50 s':>6} {'worst s':>7} {'bot+ s':>6}  "
              "final statuses | ending sources")
    lines += [header, "-" * len(header)]
    for name in SCENARIOS:
        rs = by_scenario.get(name, [])
        if not rs:
            continue
        finals = Counter("/".join(r.final) if r.final else "NOT TERMINAL" for r in rs)
        sources = Counter(r.last_source or "-" for r in rs)
        ttt = [r.time_to_terminal for r in rs if r.time_to_terminal is not None]
        p50 = f"{statistics.median(ttt):6.1f}" if ttt else "     -"
        worst = f"{max(ttt):7.1f}" if ttt else "      -"
        outlived = [r.bot_outlived for r in rs if r.bot_outlived is not None]
        bot_after = f"{max(outlived):6.1f}" if outlived else "     -"
        lines.append(f"{name:<21} {len(rs):>4}  {p50} {worst} {bot_after}  "
                     + ", ".join(f"{k} {v}" for k, v in finals.most_common()) + " | "
                     + ", ".join(f"{k} {v}" for k, v in sources.most_common()))
    stops = Counter(r.plan.stop for r in results)
    all_ttt = [r.time_to_terminal for r in results if r.time_to_terminal is not None]
    lines.append("(p50/worst: time to terminal from the stop or fault moment; bot+: worst time a bot was seen "
                 "alive after its meeting ended)")
    lines.append(f"meetings {len(results)}; stop plans " + ", ".join(f"{k} {v}" for k, v in sorted(stops.items())))
    if all_ttt:
        lines.append(f"time to terminal from the stop or fault moment: p50 {statistics.median(all_ttt):.1f}s, "
                     f"p95 {_pct(all_ttt, 0.95):.1f}s, worst {max(all_ttt):.1f}s")
    lines.append(f"run {data.ended_at - data.started_at:.0f}s (POSTs done after {data.posts_done_at - data.started_at:.0f}s)")
    k = data.kill
    if k.at is not None:
        lines.append(f"worker kill: {k.worker} SIGKILLed {k.at - data.started_at:.0f}s in, holding {k.scheduled} "
                     f"countdown tasks, {k.stopping_meetings} meetings stopping; {k.note or 'no launch pending'}")
    outlived = [r.bot_outlived for r in results if r.bot_outlived is not None]
    if outlived:
        lines.append(f"bots seen alive after their meeting ended: {sum(1 for o in outlived if o > 0.5)}, worst "
                     f"{max(outlived):.1f}s (bound {data.timings.bot_outlives_bound:.0f}s)")
    unrecorded = [r.plan.meeting_id for r in results if r.plan.meeting_id in data.meetings
                  and data.meetings[r.plan.meeting_id]["bot_container_id"] is None
                  and any(e["event"] == "start" for e in data.bot_events.get(r.plan.meeting_id, []))]
    if data.adopted:
        lines.append(f"bots adopted by the sweep (their launch died after starting them, or was still recording "
                     f"them): {data.adopted}")
    if unrecorded:
        lines.append(f"meetings whose bot ran but whose container id was never recorded: {len(unrecorded)} "
                     f"({', '.join(map(str, unrecorded[:5]))})")
    notes = Counter(r.note for r in results if r.note)
    for note, n in notes.items():
        lines.append(f"accepted: {note}: {n} meetings")
    lost = ", ".join(f"{name} {n}" for name, n in data.lost_tasks.most_common()) or "none"
    lines.append(f"tasks held by the killed worker (unacknowledged; Redis redelivers them only after the "
                 f"visibility timeout): {lost}")
    failed = [r for r in results if r.failures]
    lines.append(f"meetings failing a check: {len(failed)}; run-wide failures: {len(run_failures)}")
    for f in run_failures:
        lines.append(f"  RUN: {f}")
    for r in failed[:25]:
        lines.append(f"  meeting {r.plan.meeting_id} [{r.plan.scenario}, stop {r.plan.stop}]: " + "; ".join(r.failures))
    return "\n".join(lines)


def history_text(data: RunData, meeting_id: int) -> str:
    rows = []
    for h in data.transitions.get(meeting_id, []):
        mark = "" if h["applied"] else " (refused)"
        rows.append(f"    {h['created_at'].strftime('%H:%M:%S.%f')[:-3]} {h['from_status'] or '∅'} -> "
                    f"{h['to_status']} by {h['source']}{mark}: {h['reason']} "
                    f"{json.dumps(h['metadata'], default=str)[:200]}")
    for e in data.bot_events.get(meeting_id, []):
        rows.append(f"    bot {e['event']} at {datetime.fromtimestamp(e['t']).strftime('%H:%M:%S.%f')[:-3]}"
                    + (f" code {e.get('code')}" if e["event"] == "exit" else ""))
    return "\n".join(rows)


def failure_details(data: RunData, results: list[MeetingResult], limit: int = 10) -> str:
    parts = []
    for r in [r for r in results if r.failures][:limit]:
        plan = r.plan
        parts.append(f"  meeting {plan.meeting_id} [{plan.scenario}, stop {plan.stop}, stop answer "
                     f"{plan.stop_answer}]:\n" + history_text(data, plan.meeting_id))
    return "\n".join(parts)
