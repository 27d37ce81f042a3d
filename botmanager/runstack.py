"""`make run`: the whole system in the foreground.

Starts the embedded PostgreSQL and Redis when no URL is configured, migrates, makes sure a demo
user with an API key exists, then runs gunicorn (web), the Celery workers (one per queue kind,
botmanager/workers.py) and Celery beat. Ctrl-C
stops all of them (and the embedded servers this run started); data under RUN_DIR is kept.
"""
from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "botmanager.settings")

from botmanager import devstack, workers  # noqa: E402  (loads settings)

DEMO_EMAIL = "demo@example.com"
CONSOLE_EMAIL = "admin@example.com"


def _bootstrap_accounts() -> list[str]:
    import django

    django.setup()
    from django.conf import settings

    from accounts import services
    from accounts.models import User

    lines = []
    demo, created = services.get_or_create_user(DEMO_EMAIL, name="Demo user", max_concurrent_bots=5)
    if created or not demo.api_tokens.filter(revoked_at__isnull=True).exists():
        issued = services.issue_token(demo)
        lines.append(f"demo user {DEMO_EMAIL}: API key (shown once) X-API-Key: {issued.token}")
    else:
        lines.append(f"demo user {DEMO_EMAIL} exists; its API key was shown when it was created "
                     f"(new one: .venv/bin/python manage.py create_token {DEMO_EMAIL})")
    if not User.objects.filter(email=CONSOLE_EMAIL).exists():
        password = secrets.token_urlsafe(12)
        User.objects.create_superuser(CONSOLE_EMAIL, password, name="Console admin")
        lines.append(f"Django admin login (shown once): {CONSOLE_EMAIL} / {password}")
    if settings.ADMIN_API_TOKEN == "dev-admin-token":
        lines.append("admin API: X-Admin-API-Key: dev-admin-token (the local default; set ADMIN_API_TOKEN)")
    else:
        lines.append("admin API: X-Admin-API-Key is the ADMIN_API_TOKEN you configured")
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


def _reap_orphans(children: dict) -> None:
    own = {proc.pid for proc in children.values()}
    while True:
        try:
            pid, _status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        if pid in own:
            # One of ours: let Popen see it exited.
            for proc in children.values():
                if proc.pid == pid:
                    proc.returncode = os.waitstatus_to_exitcode(_status)


def main() -> int:
    from django.conf import settings

    _become_subreaper()

    started = devstack.ensure_services()
    python = sys.executable
    subprocess.run([python, "manage.py", "migrate", "--no-input", "-v", "0"], check=True)
    banner = _bootstrap_accounts()
    run_dir = settings.RUN_DIR
    run_dir.mkdir(parents=True, exist_ok=True)
    bin_dir = os.path.dirname(python)
    children = {
        "web": subprocess.Popen([
            os.path.join(bin_dir, "gunicorn"), "-c", "python:botmanager.gunicorn_conf", "botmanager.wsgi",
            "--bind", f"127.0.0.1:{settings.PORT}",
            "--workers", str(settings.WEB_CONCURRENCY), "--access-logfile", "-", "--graceful-timeout", "10",
        ], env={**os.environ,
                # Metrics of all gunicorn workers, summed on scrape (botmanager/metrics.py).
                "PROMETHEUS_MULTIPROC_DIR": settings.PROMETHEUS_MULTIPROC_DIR or str(run_dir / "prometheus")}),
        # One worker per kind of waiting (botmanager/workers.py): lifecycle, orchestrator,
        # webhooks, sweep.
        **{f"worker-{kind.name}": subprocess.Popen(kind.argv(bin_dir)) for kind in workers.kinds()},
        "beat": subprocess.Popen([
            os.path.join(bin_dir, "celery"), "-A", "botmanager", "beat", "--loglevel", "INFO",
            "--schedule", str(run_dir / "celerybeat-schedule"),
        ]),
    }
    print("\n".join([
        "",
        f"botmanager is up: API http://127.0.0.1:{settings.PORT}/  admin http://127.0.0.1:{settings.PORT}/admin/",
        f"PostgreSQL {settings.DATABASE_URL.split('@')[-1]}  Redis {settings.REDIS_URL.split('@')[-1]}  "
        f"orchestrator: {settings.ORCHESTRATOR}",
        *banner,
        "Ctrl-C stops everything.",
        "",
    ]), flush=True)

    stopping = False

    def _stop(signum, frame):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    exit_code = 0
    while not stopping:
        _reap_orphans(children)
        for name, proc in children.items():
            if proc.poll() is not None:
                print(f"{name} exited with code {proc.returncode}; stopping the rest", file=sys.stderr)
                exit_code = 1
                stopping = True
        time.sleep(0.5)

    for proc in children.values():
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 30
    for proc in children.values():
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
    devstack.stop_services(started)
    print("botmanager stopped; data kept under", run_dir, flush=True)
    return exit_code


if __name__ == "__main__":
    raise SystemExit(main())
