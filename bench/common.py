"""What every benchmark shares: a scratch database and Redis database on the embedded servers (or
the configured ones), Django set up against them in this process, gunicorn / Celery worker
subprocesses, and percentile arithmetic.

Benchmarks are not tests: they print figures and never fail a build. Each run creates the
database `bench_botmanager_<pid>` (dropped at exit; never the development or test database) and
starts a Redis server of its own (stopped at exit), so a running `make run` or test session is
left alone and cannot take the benchmark's Celery tasks.
"""
from __future__ import annotations

import atexit
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "botmanager.settings")

REPO = Path(__file__).resolve().parents[1]
# Per run: two benchmark runs at once (or a run and an experiment) never share a database.
BENCH_DB = f"bench_botmanager_{os.getpid()}"
RESULTS = REPO / ".run" / "bench"

_ready = False
_env: dict[str, str] = {}


# Per-user rate limits (common/ratelimit.py) no benchmark reaches: one user drives each load.
# `on`: the limiter runs on every request and never refuses (its cost is in the figures); `off`:
# no limit, the limiter is not asked (the figures without it).
RATE_LIMITS = {
    "on": {"API_RATE_LIMIT_PER_SECOND": "1000000", "API_RATE_LIMIT_BURST": "1000000",
           "BOT_REQUEST_RATE_LIMIT_PER_MINUTE": "60000000", "BOT_REQUEST_RATE_LIMIT_BURST": "1000000"},
    "off": {"API_RATE_LIMIT_PER_SECOND": "0", "BOT_REQUEST_RATE_LIMIT_PER_MINUTE": "0"},
}


def _drop(cur, name: str) -> None:
    """Drop a benchmark database. An autovacuum worker still cleaning up after the run that made it
    (a purge of a million rows leaves work for one) cannot be ended by the benchmark's role: wait
    for it, up to two minutes."""
    import psycopg2

    deadline = time.monotonic() + 120
    while True:
        try:
            cur.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
            return
        except psycopg2.errors.InsufficientPrivilege:
            if time.monotonic() > deadline:
                raise
            time.sleep(2)


def setup() -> dict[str, str]:
    """Start/reuse the servers, (re)create the bench database, point this process's Django at it,
    migrate. Returns the environment for subprocesses (gunicorn, celery)."""
    global _ready, _env
    if _ready:
        return _env
    from django.conf import settings

    from devstack import servers as devstack

    devstack.ensure_services()
    import psycopg2

    db = settings.DATABASES["default"]
    admin = psycopg2.connect(dbname=db["NAME"], user=db["USER"], password=db.get("PASSWORD") or None,
                             host=db["HOST"], port=db["PORT"])
    admin.autocommit = True
    with admin.cursor() as cur:
        # Databases left by killed runs (their process is gone) are dropped too.
        cur.execute("SELECT datname FROM pg_database WHERE datname LIKE 'bench_botmanager_%%'")
        for (name,) in cur.fetchall():
            pid = name.rsplit("_", 1)[1]
            if name == BENCH_DB or (pid.isdigit() and not _alive(int(pid))):
                _drop(cur, name)
        cur.execute(f"CREATE DATABASE {BENCH_DB}")
    admin.close()
    auth = db["USER"] + (f":{db['PASSWORD']}" if db.get("PASSWORD") else "")
    database_url = f"postgres://{auth}@{db['HOST']}:{db['PORT']}/{BENCH_DB}"
    run_dir = Path(tempfile.mkdtemp(prefix="botmanager-bench-"))
    # A Redis server of the benchmark's own: the Celery queue name is fixed, so a test run's worker
    # on a shared server and database would take the benchmark's tasks.
    redis_port = free_port()
    atexit.register(_drop_database, dict(db))
    atexit.register(shutil.rmtree, run_dir, True)
    devstack.start_redis(run_dir, redis_port)
    atexit.register(devstack.stop_redis, run_dir)
    redis_url = devstack.embedded_redis_url(redis_port)

    # This process: the settings object is loaded, the connections are not made yet.
    settings.DATABASES["default"]["NAME"] = BENCH_DB
    settings.REDIS_URL = redis_url
    settings.CELERY_BROKER_URL = redis_url
    settings.LOGGING_CONFIG = None
    # In-process requests (django.test.Client) name the host "testserver".
    settings.ALLOWED_HOSTS = [*settings.ALLOWED_HOSTS, "testserver"]
    import django

    django.setup()
    import logging

    logging.disable(logging.INFO)  # the figures, not the lines
    from botmanager.celery import app

    app.conf.broker_url = redis_url
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    from common.redis_client import get_redis

    get_redis.cache_clear()
    get_redis().flushdb()

    _env = {**os.environ, "DATABASE_URL": database_url, "REDIS_URL": redis_url, "RUN_DIR": str(run_dir),
            "LOG_LEVEL": "WARNING", "LOG_FORMAT": "plain", "DB_CONN_MAX_AGE": "600",
            "DEFAULT_MAX_CONCURRENT_BOTS": "0", **RATE_LIMITS["on"],
            # The processes started here have external URLs and their own RUN_DIR: they get this
            # stack's secrets (they refuse to start without them, botmanager/checks.py).
            **{name: getattr(settings, name) for name in ("SECRET_KEY", "BOT_TOKEN_SECRET", "ADMIN_API_TOKEN")}}
    _ready = True
    return _env


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _drop_database(db: dict) -> None:
    import psycopg2
    from django.db import connections

    connections.close_all()
    try:
        admin = psycopg2.connect(dbname=db["NAME"], user=db["USER"], password=db.get("PASSWORD") or None,
                                 host=db["HOST"], port=db["PORT"])
        admin.autocommit = True
        with admin.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS {BENCH_DB} WITH (FORCE)")
        admin.close()
    except psycopg2.Error as exc:
        print(f"bench: could not drop {BENCH_DB}: {exc}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _bin(name: str) -> str:
    return str(Path(sys.executable).with_name(name))


class Service:
    """A subprocess (gunicorn or a Celery worker) stopped on exit."""

    def __init__(self, args: list[str], env: dict, log: Path):
        self.log = log
        self.out = open(log, "wb")
        self.proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=self.out, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def pids(self) -> list[int]:
        import psutil

        try:
            parent = psutil.Process(self.proc.pid)
            return [parent.pid] + [c.pid for c in parent.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def stop(self) -> None:
        stop_all([self])


def stop_all(services: list[Service], timeout: float = 20) -> None:
    """SIGTERM every service at once, then wait for each (SIGKILL after `timeout`): their warm
    shutdowns overlap instead of adding up."""
    running = [s for s in services if s.proc.poll() is None]
    for service in running:
        service.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for service in running:
        try:
            service.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(service.proc.pid, signal.SIGKILL)
            service.proc.wait()
    for service in services:
        service.out.close()


@contextmanager
def gunicorn(env: dict, workers: int, extra_env: dict | None = None):
    port = free_port()
    run_dir = Path(env["RUN_DIR"])
    service_env = {**env, "PORT": str(port), "PUBLIC_BASE_URL": f"http://127.0.0.1:{port}",
                   "PROMETHEUS_MULTIPROC_DIR": str(run_dir / "prometheus"), **(extra_env or {})}
    service = Service([_bin("gunicorn"), "-c", "python:botmanager.gunicorn_conf", "botmanager.wsgi",
                       "--bind", f"127.0.0.1:{port}", "--workers", str(workers), "--backlog", "2048"],
                      service_env, run_dir / f"gunicorn-{port}.log")
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(url + "/healthz", service)
        service.url = url
        yield service
    finally:
        service.stop()


@contextmanager
def celery_worker(env: dict, concurrency: int, extra_env: dict | None = None, pool: str = "prefork",
                  loglevel: str = "WARNING"):
    run_dir = Path(env["RUN_DIR"])
    name = f"bench{os.getpid()}"
    service = Service([_bin("celery"), "-A", "botmanager", "worker", "--loglevel", loglevel, "--pool", pool,
                       "--concurrency", str(concurrency), "--hostname", f"{name}@%h", "--without-gossip",
                       "--without-mingle"],
                      {**env, **(extra_env or {})}, run_dir / f"celery-{name}.log")
    try:
        from botmanager.celery import app

        deadline = time.monotonic() + 60
        while not app.control.ping(destination=[f"{name}@{socket.gethostname()}"], timeout=1):
            if service.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the Celery worker did not start:\n{service.log.read_text()[-2000:]}")
        yield service
    finally:
        service.stop()


@contextmanager
def stack(env: dict, extra_env: dict | None = None, web_workers: int = 2):
    """The whole system as `make run` runs it: gunicorn, one Celery worker per kind
    (botmanager/workers.py, default pools) and beat. Yields the web service (`.url`)."""
    from botmanager import workers

    run_dir = Path(env["RUN_DIR"])
    with gunicorn(env, web_workers, extra_env=extra_env) as web:
        service_env = {**env, **(extra_env or {}), "PUBLIC_BASE_URL": web.url, "PORT": web.url.rsplit(":", 1)[1]}
        suffix = f"bench{os.getpid()}-{web.url.rsplit(':', 1)[1]}"
        services = [Service(kind.argv(str(Path(sys.executable).parent), loglevel="WARNING", hostname_suffix=suffix,
                                      extra=("--without-gossip", "--without-mingle")),
                            service_env, run_dir / f"celery-{kind.name}.log") for kind in workers.kinds()]
        services.append(Service([_bin("celery"), "-A", "botmanager", "beat", "--loglevel", "WARNING",
                                 "--schedule", str(run_dir / f"beat-{suffix}")], service_env, run_dir / "beat.log"))
        try:
            from botmanager.celery import app

            names = {f"{kind.name}@{suffix}" for kind in workers.kinds()}
            deadline = time.monotonic() + 60
            while True:
                answered = {name for reply in app.control.ping(destination=sorted(names), timeout=1) for name in reply}
                if answered >= names:
                    break
                if time.monotonic() > deadline or any(s.proc.poll() is not None for s in services):
                    raise RuntimeError("the workers did not start: " + ", ".join(sorted(names - answered)))
            web.services = services
            yield web
        finally:
            stop_all(services)


def wait_http(url: str, service: Service, timeout: float = 60) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        if service.proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{url} did not come up:\n{service.log.read_text()[-2000:]}")
        time.sleep(0.2)


def post_bot(port: int, key: str, native_id: str) -> tuple[float, int]:
    """One POST /bots on a fresh connection (as a client without keep-alive): (seconds, status)."""
    import http.client

    body = json.dumps({"platform": "google_meet", "native_meeting_id": native_id})
    started = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("POST", "/bots", body=body, headers={"Content-Type": "application/json", "X-API-Key": key})
    response = conn.getresponse()
    response.read()
    conn.close()
    return time.perf_counter() - started, response.status


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(p / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def machine() -> dict:
    import psutil

    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpus": os.cpu_count(), "cpu": cpu, "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
            "python": platform.python_version(), "load_before": os.getloadavg()}


def speed_probe() -> dict:
    """How fast this machine is right now, to compare runs taken at different times: on a shared
    virtual machine the same code measures up to 30 % slower at busy hours, and the round trip
    between two processes (what a callback does ten times) suffers most."""
    from django.db import connection

    started = time.process_time()
    total = 0
    for i in range(2_000_000):
        total += i
    loop_ms = (time.process_time() - started) * 1000
    with connection.cursor() as cursor:
        started = time.perf_counter()
        for _ in range(500):
            cursor.execute("SELECT 1")
            cursor.fetchall()
        round_trip_us = (time.perf_counter() - started) / 500 * 1e6
    return {"python_loop_2m_ms": round(loop_ms), "postgres_select_1_round_trip_us": round(round_trip_us)}


def make_user(email: str = "bench@example.com"):
    from accounts.models import User

    user, _ = User.objects.get_or_create(email=email, defaults={"max_concurrent_bots": 0})
    return user


def bulk_meetings(n: int, status: str, *, prefix: str, with_sessions: bool = False, **fields) -> list[int]:
    """Insert n meetings directly (benchmark setup, like the tests' factories). Returns their ids."""
    from django.utils import timezone

    from meetings.lifecycle import deadlines
    from meetings.models import Meeting, MeetingSession

    user = make_user()
    now = timezone.now()
    fields.setdefault("deadline_at", deadlines.deadline_for(status, now))
    ids = []
    for start in range(0, n, 5000):
        batch = [Meeting(user=user, platform="google_meet", native_meeting_id=f"{prefix}-{i}", status=status,
                         **fields) for i in range(start, min(n, start + 5000))]
        created = Meeting.objects.bulk_create(batch)
        ids.extend(m.id for m in created)
        if with_sessions:
            sessions = MeetingSession.objects.bulk_create([MeetingSession(meeting=m) for m in created])
            for m, s in zip(created, sessions):
                m.current_session = s
            Meeting.objects.bulk_update(created, ["current_session"], batch_size=5000)
    # Fresh statistics, as a live database has: right after a bulk load the planner would think the
    # tables empty and scan them until autovacuum catches up.
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("ANALYZE meetings_meeting")
        cursor.execute("ANALYZE meetings_meetingsession")
    return ids


def save(name: str, figures: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps({"machine": machine(), "figures": figures,
                                                      "at": time.strftime("%Y-%m-%d %H:%M:%S")}, indent=2,
                                                     default=str))


def print_table(title: str, rows: list[tuple]) -> None:
    print(f"\n== {title}")
    width = max(len(str(r[0])) for r in rows)
    for row in rows:
        print(f"  {str(row[0]).ljust(width)}  " + "  ".join(str(c) for c in row[1:]))
    sys.stdout.flush()


def cleanup_run_dir(env: dict) -> None:
    shutil.rmtree(env.get("RUN_DIR", ""), ignore_errors=True)


@contextmanager
def count_queries(sink: list | None = None):
    """Counts the SQL statements this thread's connection runs (no 9,000-entry cap like
    CaptureQueriesContext). `sink` collects the statements when given."""
    from django.db import connection

    counter = {"n": 0}

    def wrapper(execute, sql, params, many, context):
        counter["n"] += 1
        if sink is not None:
            sink.append(sql)
        return execute(sql, params, many, context)

    with connection.execute_wrapper(wrapper):
        yield counter


def meet_id(n: int, series: int = 0) -> str:
    """A valid, distinct Google Meet id (abc-defg-hij) for number n of a series."""
    value = series * 26**7 + n
    letters = ""
    for _ in range(10):
        value, digit = divmod(value, 26)
        letters = chr(ord("a") + digit) + letters
    return f"{letters[:3]}-{letters[3:7]}-{letters[7:]}"
