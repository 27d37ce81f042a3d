"""Small helpers shared by the tests (waiting is tests/waiting.py): reading Redis pub/sub, and the Celery broker's
queues (reading them, running their tasks here, losing them)."""
from __future__ import annotations

import base64
import json
import time
from datetime import datetime

import redis

from common.queues import QUEUES

# Per-user rate limits no test driver reaches (common/ratelimit.py): for servers one test user
# drives as hard as it can (the fuzz run, the chaos suite). The limiter still runs on every request;
# tests/test_rate_limits.py is where it refuses.
UNREACHED_RATE_LIMITS = {"API_RATE_LIMIT_PER_SECOND": "1000000", "API_RATE_LIMIT_BURST": "1000000",
                         "BOT_REQUEST_RATE_LIMIT_PER_MINUTE": "60000000", "BOT_REQUEST_RATE_LIMIT_BURST": "1000000"}


def concurrently(fn, n: int) -> list:
    """Run `fn()` in `n` threads released together (each closes its database connection after);
    returns their results, in no particular order."""
    import threading

    from django.db import connection

    barrier = threading.Barrier(n)
    results = []

    def run():
        barrier.wait()
        try:
            results.append(fn())
        finally:
            connection.close()

    threads = [threading.Thread(target=run) for _ in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def subscribe(redis_conn, *channels):
    """A pub/sub connection subscribed (confirmed) to `channels`."""
    pubsub = redis_conn.pubsub()
    pubsub.subscribe(*channels)
    for _ in channels:
        assert pubsub.get_message(timeout=2)["type"] == "subscribe"
    return pubsub


def published(pubsub, timeout: float = 2.0) -> dict[str, list[dict]]:
    """Every message published on the subscribed channels, by channel, until `timeout` of silence
    (0.3 s after the first message); closes the subscription."""
    got: dict[str, list[dict]] = {}
    while (message := pubsub.get_message(timeout=timeout)) is not None:
        if message["type"] == "message":
            got.setdefault(message["channel"], []).append(json.loads(message["data"]))
        timeout = 0.3
    pubsub.close()
    return got


# --- Migrations -----------------------------------------------------------------------------------------
def migrate_to(target: list[tuple[str, str]]):
    """Migrate the test database to `target` ([(app, migration)]); returns the apps registry of that
    state (its historical models). Tests of data migrations go back and forth with it."""
    from django.db import connection
    from django.db.migrations.executor import MigrationExecutor

    executor = MigrationExecutor(connection)
    executor.migrate(target)
    return executor.loader.project_state(target).apps


def latest_migrations(app: str | None = None) -> list[tuple[str, str]]:
    """The latest migration of every app, whatever `app` says: going back in one app also unapplies
    the other apps' migrations that depend on it, and the way back must apply them again."""
    from django.db import connection
    from django.db.migrations.executor import MigrationExecutor

    return MigrationExecutor(connection).loader.graph.leaf_nodes()


# --- Subprocess stacks -------------------------------------------------------------------------------
def stack_env(run_dir, **extra: str) -> dict[str, str]:
    """The environment of service subprocesses (gunicorn, Celery workers, beat) that work on the
    test database and the test Redis database."""
    import os

    from django.conf import settings

    db = settings.DATABASES["default"]
    auth = db["USER"] + (f":{db['PASSWORD']}" if db.get("PASSWORD") else "")
    base, _, _db = settings.REDIS_URL.rpartition("/")
    redis_url = f"{base}/{settings.TEST_REDIS_DB}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST", "SIMBOT_"))}
    env.update({"DJANGO_SETTINGS_MODULE": "botmanager.settings",
                "DATABASE_URL": f"postgres://{auth}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
                "REDIS_URL": redis_url, "CELERY_BROKER_URL": redis_url, "RUN_DIR": str(run_dir),
                "LOG_LEVEL": "WARNING", "DEFAULT_MAX_CONCURRENT_BOTS": "0", "PYTHONUNBUFFERED": "1", **extra})
    return env


def a_new_terminal(**variables: str) -> dict[str, str]:
    """The environment of a terminal someone just opened: PATH and HOME, and what they exported."""
    import os

    return {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/root"), **variables}


def close_other_connections() -> None:
    """End the database connections of other processes and threads (workers) so the test database
    can be flushed. Client connections only: PostgreSQL refuses to end an autovacuum worker (an
    error that used to fail a test's teardown at random)."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                       "WHERE datname = current_database() AND pid <> pg_backend_pid() "
                       "AND backend_type = 'client backend'")


# --- Broker -----------------------------------------------------------------------------------------
def broker_client() -> redis.Redis:
    from botmanager.celery import app

    return redis.Redis.from_url(app.conf.broker_url)


def all_queues() -> list[str]:
    """Every queue of the broker: the fixed ones and the instance queues (`orchestrator.<hex>`,
    `sweep.<hex>`, common/queues.py)."""
    dynamic = {key.decode() for pattern in ("orchestrator.*", "sweep.*") for key in broker_client().keys(pattern)}
    return [*QUEUES, *sorted(dynamic)]


def queued() -> list[dict]:
    """The task messages waiting in the broker, in every queue: [{"task", "args", "eta", "queue"}],
    oldest first within a queue."""
    messages = []
    for queue in all_queues():
        for raw in reversed(broker_client().lrange(queue, 0, -1)):  # kombu LPUSHes, consumers BRPOP
            message = json.loads(raw)
            headers = message["headers"]
            body = message["body"]
            if message["properties"].get("body_encoding") == "base64":
                body = base64.b64decode(body)
            args = json.loads(body)[0]
            messages.append({"task": headers["task"], "args": args, "queue": queue,
                             "eta": datetime.fromisoformat(headers["eta"]) if headers.get("eta") else None})
    return messages


def queued_tasks(name: str) -> list[dict]:
    return [m for m in queued() if m["task"] == name]


def lose_queued_tasks() -> None:
    """Drop every waiting task, as a broker or worker outage loses them."""
    broker_client().delete(*all_queues())


def run_queued(name: str) -> int:
    """Run (here and now) the queued tasks named `name`, taking them off the queue as a worker
    would; returns how many ran. Tasks they enqueue stay queued."""
    from botmanager.celery import app

    broker = broker_client()
    ran = 0
    for queue in all_queues():
        for raw in broker.lrange(queue, 0, -1):
            message = json.loads(raw)
            if message["headers"]["task"] != name:
                continue
            broker.lrem(queue, 1, raw)
            body = message["body"]
            if message["properties"].get("body_encoding") == "base64":
                body = base64.b64decode(body)
            args, kwargs, _ = json.loads(body)
            app.tasks[name].apply(args=args, kwargs=kwargs, throw=True)
            ran += 1
    return ran


def run_bot_stops(rounds: int = 50) -> int:
    """Carry out the bot stops the tasks asked for (terminate, then kill and remove), as the
    orchestrator worker would once their countdowns are due; returns how many tasks ran."""
    import time

    ran = 0
    for _ in range(rounds):
        step = run_queued("meetings.terminate_bot") + run_queued("meetings.kill_bot")
        ran += step
        if not step:
            return ran
        time.sleep(0.1)  # a killed bot takes a moment to be reaped before it can be removed
    return ran
