"""The embedded PostgreSQL and Redis of the local stack (devstack.servers).

`make run` and the tests call `ensure_services()`; Ctrl-C on `make run` calls `stop_services()` for
what it started, and the next `make run` starts the servers again on the same RUN_DIR. That users
survive this cycle is what these tests check, on real servers. The restart tests run a *separate*
pair of servers (their own RUN_DIR and ports), never the ones the session and other runs use.
"""
from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import psycopg2
import pytest
import redis as redis_lib
from django.db import connection

from devstack import servers as devstack


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _pg(port: int):
    from django.conf import settings

    conn = psycopg2.connect(host="127.0.0.1", port=port, user=devstack.PG_DB_USER, dbname=devstack.PG_DB_NAME,
                            password=settings.EMBEDDED_POSTGRES_PASSWORD, connect_timeout=5)
    conn.autocommit = True
    return conn


def _pg_started_at(port: int):
    conn = _pg(port)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT pg_postmaster_start_time()")
            return cur.fetchone()[0]
    finally:
        conn.close()


def _redis(port: int) -> redis_lib.Redis:
    from django.conf import settings

    return redis_lib.Redis(host="127.0.0.1", port=port, socket_timeout=5, decode_responses=True,
                           password=settings.EMBEDDED_REDIS_PASSWORD)


@pytest.fixture
def separate_stack(settings):
    """Point the settings at a fresh RUN_DIR and free ports; stop whatever ran there at the end.

    Not under pytest's tmp_path: as root, PostgreSQL runs as a system user that must traverse
    every parent of its data directory, and every pytest session that starts (other runs share
    the machine) resets /tmp/pytest-of-<user> to mode 0700, which would cut the running server
    off its own files. A directory of our own directly under the system temp dir stays reachable.
    """
    run_dir = Path(tempfile.mkdtemp(prefix="botmanager-devstack-test-"))
    settings.RUN_DIR = run_dir
    settings.EMBEDDED_POSTGRES = True
    settings.EMBEDDED_REDIS = True
    settings.EMBEDDED_POSTGRES_PORT = _free_port()
    settings.EMBEDDED_REDIS_PORT = _free_port()
    assert settings.EMBEDDED_POSTGRES_PORT != settings.EMBEDDED_REDIS_PORT
    try:
        yield settings
    finally:
        try:
            devstack.stop_services()  # every server under this RUN_DIR, whatever the test did
        finally:
            shutil.rmtree(run_dir, ignore_errors=True)


# --- The session's servers -------------------------------------------------------------------------
@pytest.mark.django_db
def test_ensure_services_reuses_the_servers_the_session_already_runs(redis_conn):
    """Embedded or external, the servers the session runs on are neither restarted nor duplicated."""
    def server_identity():
        with connection.cursor() as cur:
            cur.execute("SELECT pg_postmaster_start_time()")
            return cur.fetchone()[0], redis_conn.info("server")["run_id"]
    before = server_identity()

    started = devstack.ensure_services()

    assert (started.postgres, started.redis) == (False, False)
    assert server_identity() == before


# --- A separate stack ------------------------------------------------------------------------------
def test_ensure_services_starts_postgres_and_redis_under_an_empty_run_dir(separate_stack):
    run_dir = Path(separate_stack.RUN_DIR)

    started = devstack.ensure_services()

    assert (started.postgres, started.redis) == (True, True)
    assert (run_dir / "postgres" / "PG_VERSION").exists()
    conn = _pg(separate_stack.EMBEDDED_POSTGRES_PORT)  # the application database exists
    conn.close()
    assert _redis(separate_stack.EMBEDDED_REDIS_PORT).ping()


def test_when_ensure_services_returns_the_redis_pid_file_names_the_running_server(separate_stack):
    """Stopping Redis goes by its pid file, and Redis listens before it writes that file: without
    waiting for it, a stop right after the start (Ctrl-C just after `make run` started) found no
    pid file and left Redis running."""
    devstack.ensure_services()

    pidfile = Path(separate_stack.RUN_DIR, "redis", "redis.pid")
    server = _redis(separate_stack.EMBEDDED_REDIS_PORT).info("server")
    assert pidfile.read_text().strip() == str(server["process_id"])


def test_ensure_services_is_idempotent_when_the_servers_are_already_up(separate_stack):
    devstack.ensure_services()
    pg_started_at = _pg_started_at(separate_stack.EMBEDDED_POSTGRES_PORT)
    redis_run_id = _redis(separate_stack.EMBEDDED_REDIS_PORT).info("server")["run_id"]

    again = devstack.ensure_services()

    assert (again.postgres, again.redis) == (False, False)
    assert _pg_started_at(separate_stack.EMBEDDED_POSTGRES_PORT) == pg_started_at
    assert _redis(separate_stack.EMBEDDED_REDIS_PORT).info("server")["run_id"] == redis_run_id


def test_data_survives_a_stop_and_a_start_on_the_same_run_dir(separate_stack):
    pg_port, redis_port = separate_stack.EMBEDDED_POSTGRES_PORT, separate_stack.EMBEDDED_REDIS_PORT
    first = devstack.ensure_services()
    conn = _pg(pg_port)
    with conn.cursor() as cur:
        cur.execute("CREATE TABLE kept_users (email text PRIMARY KEY)")
        cur.execute("INSERT INTO kept_users VALUES ('alice@example.com')")
    conn.close()
    _redis(redis_port).set("kept-key", "kept-value")

    devstack.stop_services(first)
    assert not devstack._port_open(pg_port)
    assert not devstack._port_open(redis_port)
    second = devstack.ensure_services()

    assert (second.postgres, second.redis) == (True, True)
    conn = _pg(pg_port)
    with conn.cursor() as cur:
        cur.execute("SELECT email FROM kept_users")
        assert cur.fetchall() == [("alice@example.com",)]
    conn.close()
    assert _redis(redis_port).get("kept-key") == "kept-value"
    devstack.stop_services(second)
    assert not devstack._port_open(pg_port)
    assert not devstack._port_open(redis_port)


def test_stop_services_stops_only_the_servers_the_call_started(separate_stack):
    pg_port, redis_port = separate_stack.EMBEDDED_POSTGRES_PORT, separate_stack.EMBEDDED_REDIS_PORT
    started = devstack.ensure_services()

    devstack.stop_services(devstack.Started(postgres=False, redis=False))
    assert devstack._port_open(pg_port)
    assert devstack._port_open(redis_port)

    devstack.stop_services(devstack.Started(postgres=False, redis=True))
    assert devstack._port_open(pg_port)
    assert not devstack._port_open(redis_port)

    devstack.stop_services(started)
    assert not devstack._port_open(pg_port)


def test_stop_services_with_nothing_running_is_a_no_op(separate_stack):
    devstack.stop_services()

    assert not Path(separate_stack.RUN_DIR, "postgres").exists()


def test_a_pid_file_left_by_a_dead_server_does_not_block_the_next_start(separate_stack):
    pg_port = separate_stack.EMBEDDED_POSTGRES_PORT
    pgdata = Path(separate_stack.RUN_DIR, "postgres")
    devstack.stop_services(devstack.ensure_services())
    gone = subprocess.Popen(["true"])
    gone.wait()  # a pid that no longer runs, as after a crash or a kill -9
    pidfile = pgdata / "postmaster.pid"
    pidfile.write_text(f"{gone.pid}\n{pgdata}\n")

    started = devstack.ensure_services()

    assert started.postgres
    assert devstack._port_open(pg_port)
    assert pidfile.read_text().splitlines()[0] != str(gone.pid)



# --- The embedded servers listen with authentication; make run's PostgreSQL is durable ------------
@pytest.mark.django_db
def test_the_session_redis_refuses_clients_without_the_password():
    from django.conf import settings

    client = redis_lib.Redis(host="127.0.0.1", port=settings.EMBEDDED_REDIS_PORT, socket_timeout=5)
    with pytest.raises(redis_lib.AuthenticationError):
        client.ping()


def test_the_embedded_redis_has_config_disabled_and_an_append_only_file(separate_stack):
    devstack.ensure_services()
    client = _redis(separate_stack.EMBEDDED_REDIS_PORT)

    with pytest.raises(redis_lib.ResponseError, match="unknown command"):
        client.config_get("dir")
    assert client.info("persistence")["aof_enabled"] == 1
    assert oct((separate_stack.RUN_DIR / "redis").stat().st_mode & 0o777) == "0o700"


def test_the_embedded_postgres_refuses_connections_without_the_password(separate_stack):
    devstack.ensure_services()

    for user in (devstack.PG_DB_USER, devstack.PG_SUPERUSER):
        with pytest.raises(psycopg2.OperationalError, match="password"):
            psycopg2.connect(host="127.0.0.1", port=separate_stack.EMBEDDED_POSTGRES_PORT, user=user,
                             dbname="postgres", connect_timeout=5)


def test_the_application_role_is_not_a_superuser_but_may_create_databases(separate_stack):
    devstack.ensure_services()
    conn = _pg(separate_stack.EMBEDDED_POSTGRES_PORT)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT rolsuper, rolcreatedb, rolcreaterole FROM pg_roles WHERE rolname = current_user")
            assert cur.fetchone() == (False, True, False)
            with pytest.raises(psycopg2.errors.InsufficientPrivilege):
                cur.execute("COPY (SELECT 1) TO PROGRAM 'true'")
    finally:
        conn.close()


def _durability(port: int) -> tuple:
    conn = _pg(port)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT current_setting('fsync'), current_setting('full_page_writes'), "
                        "current_setting('synchronous_commit')")
            return cur.fetchone()
    finally:
        conn.close()


def test_make_runs_postgres_keeps_the_durability_defaults(separate_stack):
    devstack.ensure_services()  # what `make run` calls

    assert _durability(separate_stack.EMBEDDED_POSTGRES_PORT) == ("on", "on", "on")


def test_the_tests_postgres_may_run_without_durability(separate_stack):
    devstack.ensure_services(durable=False)

    assert _durability(separate_stack.EMBEDDED_POSTGRES_PORT) == ("off", "off", "off")


def test_a_cluster_made_with_trust_authentication_is_upgraded_with_its_data(separate_stack):
    """An older botmanager's RUN_DIR: `initdb --auth=trust` with the application role as superuser."""
    run_dir, port = separate_stack.RUN_DIR, separate_stack.EMBEDDED_POSTGRES_PORT
    bin_dir = devstack._pg_bin_dir()
    pgdata = run_dir / "postgres"
    pgdata.mkdir(parents=True)
    (run_dir / "postgres.log").touch()
    if devstack._as_root():
        devstack._ensure_system_user()
        devstack._open_path_for(run_dir)
        for path in (pgdata, run_dir / "postgres.log"):
            shutil.chown(path, devstack.PG_SYSTEM_USER, devstack.PG_SYSTEM_USER)
    devstack._run_pg([str(bin_dir / "initdb"), "-D", str(pgdata), "--auth=trust", "-U", devstack.PG_DB_USER,
                      "--encoding=UTF8", "--locale=C"], stdout=subprocess.DEVNULL)
    devstack._pg_ctl_start(pgdata, bin_dir, run_dir / "postgres.log", port, durable=False)
    old = psycopg2.connect(host="127.0.0.1", port=port, user=devstack.PG_DB_USER, dbname="postgres")
    old.autocommit = True
    old.cursor().execute(f"CREATE DATABASE {devstack.PG_DB_NAME}")
    old.close()
    old = psycopg2.connect(host="127.0.0.1", port=port, user=devstack.PG_DB_USER, dbname=devstack.PG_DB_NAME)
    old.autocommit = True
    old.cursor().execute("CREATE TABLE kept (v text); INSERT INTO kept VALUES ('from the old cluster')")
    old.close()
    devstack.stop_postgres(run_dir)

    devstack.ensure_services()

    conn = _pg(port)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT v FROM kept")
            assert cur.fetchone() == ("from the old cluster",)
            cur.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
            assert cur.fetchone() == (False,)
    finally:
        conn.close()
    assert not devstack._trusts_everyone(pgdata)
    assert list(run_dir.glob("postgres.before-passwords-*"))
