"""`make run`: the whole system in the foreground.

Starts the embedded PostgreSQL and Redis when no URL is configured, migrates, makes sure a demo
user with an API key exists, then runs gunicorn (web), the Celery workers (one per queue kind,
botmanager/workers.py) and Celery beat, and keeps them running (devstack/supervisor.py: a child
that exits is restarted with back-off, an embedded server that stops answering is started again).
Ctrl-C stops all of them (and the embedded servers this run started); data under RUN_DIR is kept.
The logins it creates are kept in RUN_DIR/credentials.env (0600) and, while it runs, its ports in
RUN_DIR/runstack.env, so that a second terminal needs only RUN_DIR (devstack/stackinfo.py).
"""
from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "botmanager.settings")

from botmanager import workers
from devstack import servers as devstack, stackinfo  # noqa: E402  (loads settings)
from devstack.supervisor import Supervisor, stop_leftovers  # noqa: E402

DEMO_EMAIL = "demo@example.com"
CONSOLE_EMAIL = "admin@example.com"
# The demo user may run a few bots at once (new users get DEFAULT_MAX_CONCURRENT_BOTS).
DEMO_MAX_CONCURRENT_BOTS = 5
# What RUN_DIR/credentials.env holds, in this order.
CREDENTIALS = ("DEMO_EMAIL", "DEMO_API_KEY", "ADMIN_EMAIL", "ADMIN_PASSWORD")


def _bootstrap_accounts(run_dir) -> list[str]:
    """The demo user with an API key and the Django admin's superuser, their credentials kept in
    RUN_DIR/credentials.env (0600, shell syntax, the README's curl session sources it). Returns
    the banner lines: the values themselves when they are new, else where they are."""
    import django

    django.setup()
    from accounts import services
    from accounts.models import User

    kept = stackinfo.read_credentials(run_dir)
    first_start = not kept
    fresh: dict[str, str] = {}
    demo, _ = services.get_or_create_user(DEMO_EMAIL, name="Demo user", max_concurrent_bots=DEMO_MAX_CONCURRENT_BOTS)
    if services.user_for_token(kept.get("DEMO_API_KEY", "")) != demo:
        fresh["DEMO_API_KEY"] = services.issue_token(demo).token
    console = User.objects.filter(email=CONSOLE_EMAIL).first()
    if console is None:
        fresh["ADMIN_PASSWORD"] = secrets.token_urlsafe(12)
        User.objects.create_superuser(CONSOLE_EMAIL, fresh["ADMIN_PASSWORD"], name="Console admin")
    elif kept.get("ADMIN_PASSWORD") and not console.check_password(kept["ADMIN_PASSWORD"]):
        kept.pop("ADMIN_PASSWORD")  # changed since (manage.py changepassword): no longer ours to show
    values = {**kept, **fresh, "DEMO_EMAIL": DEMO_EMAIL, "ADMIN_EMAIL": CONSOLE_EMAIL}
    where = stackinfo.write_credentials(run_dir, {name: values[name] for name in CREDENTIALS if name in values})
    lines = []
    if "DEMO_API_KEY" in fresh:
        lines.append(f"demo user {DEMO_EMAIL}: X-API-Key: {fresh['DEMO_API_KEY']}")
    if "ADMIN_PASSWORD" in fresh:
        lines.append(f"Django admin login: {CONSOLE_EMAIL} / {fresh['ADMIN_PASSWORD']}")
    elif "ADMIN_PASSWORD" not in kept:
        lines.append(f"Django admin login: {CONSOLE_EMAIL}, password as set before (a new one: "
                     f".venv/bin/python manage.py changepassword {CONSOLE_EMAIL})")
    lines.append(f"the demo key and the Django admin login are kept in {where} (0600; `. {where}` sets "
                 f"DEMO_API_KEY, ADMIN_EMAIL, ADMIN_PASSWORD)")
    lines.append(devstack.admin_token_line(first_start=first_start))
    return lines


def _become_subreaper() -> None:
    """Bots of the process backend outlive a restarted worker; as a child subreaper this
    supervisor inherits them and reaps them, so no zombie is left behind (Linux only)."""
    try:
        import ctypes

        PR_SET_CHILD_SUBREAPER = 36
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def _reap_orphans(supervisor: Supervisor) -> None:
    """As a subreaper we inherit orphaned bots and grandchildren: reap them. A pid of one of our
    children is handed to its Popen so that `poll()` sees the exit."""
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        for child in supervisor.children:
            if child.proc is not None and child.proc.pid == pid:
                child.proc.returncode = os.waitstatus_to_exitcode(status)


def _wait_web(port: int, until, timeout: float = 30.0) -> None:
    """Until the web answers /healthz (the banner comes after the servers' own start-up lines)."""
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not until():
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1):
                return
        except OSError:
            time.sleep(0.2)


def main() -> int:
    from django.conf import settings

    _become_subreaper()
    run_dir = settings.RUN_DIR
    run_dir.mkdir(parents=True, exist_ok=True)
    other = stackinfo.running(run_dir)
    if other:
        _say(f"another `make run` is running on RUN_DIR={run_dir} (pid {other[stackinfo.PID]}, web on port "
             f"{other.get('PORT', settings.PORT)}): stop it first (Ctrl-C in its terminal), or give this one "
             f"another RUN_DIR, PORT, EMBEDDED_POSTGRES_PORT and EMBEDDED_REDIS_PORT")
        return 1
    # What a crashed earlier run left (its gunicorn would hold the port, two beats would run).
    stop_leftovers(run_dir, log=_say)

    started = devstack.ensure_services()
    # From here on a second terminal's manage.py finds this stack's ports (devstack/stackinfo.py).
    stackinfo.write(run_dir, {name: getattr(settings, name) for name in stackinfo.SHARED},
                    external_urls=[name for name, embedded in (("DATABASE_URL", settings.EMBEDDED_POSTGRES),
                                                               ("REDIS_URL", settings.EMBEDDED_REDIS)) if not embedded])
    try:
        return _run(run_dir, started)
    finally:
        stackinfo.remove(run_dir)


def _run(run_dir, started) -> int:
    from django.conf import settings

    python = sys.executable
    subprocess.run([python, "manage.py", "migrate", "--no-input", "-v", "0"], check=True)
    banner = _bootstrap_accounts(run_dir)
    bin_dir = os.path.dirname(python)
    supervisor = Supervisor(run_dir, log=_say)
    supervisor.add("web", [
        os.path.join(bin_dir, "gunicorn"), "-c", "python:botmanager.gunicorn_conf", "botmanager.wsgi",
        "--bind", f"127.0.0.1:{settings.PORT}",
        "--workers", str(settings.WEB_CONCURRENCY), "--access-logfile", "-", "--graceful-timeout", "10",
    ], env={**os.environ,
            # Metrics of all gunicorn workers, summed on scrape (observability/metrics.py).
            "PROMETHEUS_MULTIPROC_DIR": settings.PROMETHEUS_MULTIPROC_DIR or str(run_dir / "prometheus")})
    # One worker per kind of waiting (botmanager/workers.py): lifecycle, orchestrator, webhooks, sweep.
    for kind in workers.kinds():
        supervisor.add(f"worker-{kind.name}", kind.argv(bin_dir))
    supervisor.add("beat", [os.path.join(bin_dir, "celery"), "-A", "botmanager", "beat", "--loglevel", "INFO",
                            "--schedule", str(run_dir / "celerybeat-schedule")])
    # The embedded servers this stack uses are started again if they stop answering (an OOM kill,
    # a crash): their data (PostgreSQL, Redis's append-only file) survives the restart.
    if settings.EMBEDDED_POSTGRES:
        supervisor.servers.append(("PostgreSQL", lambda: devstack.port_open(settings.EMBEDDED_POSTGRES_PORT),
                                   lambda: devstack.start_postgres(run_dir, settings.EMBEDDED_POSTGRES_PORT)))
    if settings.EMBEDDED_REDIS:
        supervisor.servers.append(("Redis", lambda: devstack.port_open(settings.EMBEDDED_REDIS_PORT),
                                   lambda: devstack.start_redis(run_dir, settings.EMBEDDED_REDIS_PORT)))
    stopping = False

    def _stop(signum, frame):
        nonlocal stopping
        stopping = True

    # Before the children start: a Ctrl-C during start-up stops what started.
    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    supervisor.start_all()
    _wait_web(settings.PORT, until=lambda: stopping)
    print("\n".join([
        "",
        f"botmanager is up: API http://127.0.0.1:{settings.PORT}/  admin http://127.0.0.1:{settings.PORT}/admin/",
        f"PostgreSQL {settings.DATABASE_URL.split('@')[-1]}  Redis {settings.REDIS_URL.split('@')[-1]}  "
        f"orchestrator: {settings.ORCHESTRATOR}",
        *banner,
        "A process that exits is restarted; Ctrl-C stops everything.",
        "",
    ]), flush=True)

    while not stopping:
        _reap_orphans(supervisor)
        supervisor.tick()
        time.sleep(0.5)

    _say("stopping: web, workers, beat (Ctrl-C again does not hurry them)")
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    supervisor.stop_all()
    devstack.stop_services(started)
    print("botmanager stopped; data kept under", run_dir, flush=True)
    return 0


def _say(message: str) -> None:
    print(f"runstack: {message}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
