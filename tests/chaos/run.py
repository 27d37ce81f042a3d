"""The chaos suite as a script, for bigger runs than CI's:

    .venv/bin/python -m tests.chaos.run --count 1000 [--seed N] [--rate 4] [--redis-db N]
                                        [--database-url postgres://...] [--keep-db] [--keep-run-dir]

Without --database-url it creates a database of its own (`chaos_<time>`) on the configured
PostgreSQL server (the embedded one when DATABASE_URL is unset; started if needed), migrates it,
runs, prints the per-scenario table and drops it (unless --keep-db). With --database-url it
migrates and uses that database. The broker is a private Redis server started in the run
directory, unless --redis-db names a database of the configured server that nobody else uses. Exit code 0 when every check passed, 1 otherwise.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "botmanager.settings")


def _parse(argv):
    parser = argparse.ArgumentParser(prog="python -m tests.chaos.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=1000, help="meetings (default 1000)")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: random)")
    parser.add_argument("--rate", type=float, default=None, help="POST /bots per second")
    parser.add_argument("--redis-db", type=int, default=None,
                        help="use this database of the configured Redis server (default: a private Redis server)")
    parser.add_argument("--database-url", default=None, help="use (and migrate) this database")
    parser.add_argument("--scenarios", default=None,
                        help="comma-separated subset of the scenarios (default: all)")
    parser.add_argument("--no-kill", action="store_true", help="do not SIGKILL a worker")
    parser.add_argument("--kill-without-drain", action="store_true",
                        help="SIGKILL the worker even while launches are in flight")
    parser.add_argument("--log-level", default="WARNING", help="log level of the service processes")
    parser.add_argument("--keep-db", action="store_true", help="keep the database this script created")
    parser.add_argument("--keep-run-dir", action="store_true", help="keep the logs and bot state")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = _parse(argv)
    from devstack import servers as devstack  # loads the settings

    devstack.ensure_services()
    import dj_database_url
    import psycopg2
    from django.conf import settings

    created = None
    if args.database_url:
        database_url = args.database_url
    else:
        server = settings.DATABASES["default"]
        created = f"chaos_{time.strftime('%Y%m%d_%H%M%S')}_{os.getpid()}"
        conn = psycopg2.connect(host=server["HOST"], port=server["PORT"], user=server["USER"],
                                password=server.get("PASSWORD") or None, dbname="postgres")
        conn.autocommit = True
        with conn.cursor() as cursor:
            cursor.execute(f'CREATE DATABASE "{created}"')
        conn.close()
        auth = server["USER"] + (f":{server['PASSWORD']}" if server.get("PASSWORD") else "")
        database_url = f"postgres://{auth}@{server['HOST']}:{server['PORT']}/{created}"
    # Before django.setup(): no connection exists yet.
    settings.DATABASES["default"] = dj_database_url.parse(database_url, conn_max_age=0)

    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0, interactive=False)

    from tests.chaos import harness

    base, _, _db = settings.REDIS_URL.rpartition("/")
    run_dir = Path(tempfile.mkdtemp(prefix="chaos-run-"))
    seed = args.seed if args.seed is not None else int.from_bytes(os.urandom(3), "big")
    config = harness.ChaosConfig(
        count=args.count, seed=seed, run_dir=run_dir, database_url=database_url,
        redis_url=None if args.redis_db is None else f"{base}/{args.redis_db}", log_level=args.log_level,
        kill_worker_at=None if args.no_kill else 0.5, kill_drain=not args.kill_without_drain,
        scenarios=tuple(args.scenarios.split(",")) if args.scenarios else None,
        settle_seconds=max(150.0, args.count * 0.2),
    )
    if args.rate:
        config.rate = args.rate
    print(f"chaos run: {args.count} meetings, seed {seed}, database {database_url.rsplit('/', 1)[-1]}, "
          f"redis {config.redis_url or 'private'}, run dir {run_dir}", flush=True)
    run = harness.ChaosRun(config, log=lambda line: print(line, flush=True))
    ok = False
    try:
        data = run.run()
        results, run_failures = harness.verify(data)
        print(harness.report(data, results, run_failures))
        ok = not run_failures and not any(r.failures for r in results)
        if not ok:
            print("\nhistories of failing meetings:\n" + harness.failure_details(data, results, limit=20))
            print("\n" + run.service.tails(40))
    except Exception:
        print(run.service.tails(60))
        raise
    finally:
        from django.db import connections

        connections.close_all()
        if created and not args.keep_db:
            _drop(settings, created)
        if ok and not args.keep_run_dir:
            shutil.rmtree(run_dir, ignore_errors=True)
        else:
            print(f"logs and bot state kept in {run_dir}")
    print("chaos run: PASSED" if ok else "chaos run: FAILED")
    return 0 if ok else 1


def _drop(settings, name: str) -> None:
    import psycopg2

    server = settings.DATABASES["default"]
    conn = psycopg2.connect(host=server["HOST"], port=server["PORT"], user=server["USER"],
                            password=server.get("PASSWORD") or None, dbname="postgres")
    conn.autocommit = True
    with conn.cursor() as cursor:
        cursor.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", [name])
        cursor.execute(f'DROP DATABASE IF EXISTS "{name}"')
    conn.close()


if __name__ == "__main__":
    sys.exit(main())
