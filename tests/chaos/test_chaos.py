"""The chaos suite: N meetings (200 by default, `--chaos-count`) through the real service with
faulty bots, random stops and a SIGKILLed worker; see `harness.py` for what is checked and the
bounds."""
from __future__ import annotations

import random

import pytest
from django.conf import settings

from tests.chaos import harness, postcount

pytestmark = [pytest.mark.chaos, pytest.mark.django_db(transaction=True)]

DEFAULT_COUNT = 200


def _option(request, name, default):
    value = request.config.getoption(name, default=None)
    return default if value is None else value


def _database_url() -> str:
    db = settings.DATABASES["default"]
    auth = db["USER"] + (f":{db['PASSWORD']}" if db.get("PASSWORD") else "")
    return f"postgres://{auth}@{db['HOST']}:{db['PORT']}/{db['NAME']}"


def _redis_url() -> str:
    base, _, _db = settings.REDIS_URL.rpartition("/")
    return f"{base}/{settings.TEST_REDIS_DB}"


@pytest.fixture
def chaos_config(request, tmp_path):
    count = _option(request, "--chaos-count", DEFAULT_COUNT)
    seed = _option(request, "--chaos-seed", random.SystemRandom().randrange(1_000_000))
    return harness.ChaosConfig(count=count, seed=seed, run_dir=tmp_path, database_url=_database_url(),
                               redis_url=_redis_url())


def test_every_meeting_ends_within_its_bound_whatever_the_bots_and_a_worker_do(chaos_config):
    run = harness.ChaosRun(chaos_config)
    try:
        data = run.run()
    except Exception:
        print(run.service.tails())
        raise
    finally:
        _close_other_connections()
    results, run_failures = harness.verify(data)
    table = harness.report(data, results, run_failures)
    print(f"\nchaos seed {chaos_config.seed} (rerun: --chaos-seed {chaos_config.seed})\n{table}")
    failing = [r for r in results if r.failures]
    if failing or run_failures:
        pytest.fail(f"chaos seed {chaos_config.seed}\n{table}\n\nhistories:\n"
                    f"{harness.failure_details(data, results)}\n\n{run.service.tails(60)}", pytrace=False)
    assert data.kill.at is not None, "the worker kill never happened"


def _close_other_connections() -> None:
    """The service's processes are gone; make sure none of their connections keeps the test
    database from being flushed and dropped."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                       "WHERE datname = current_database() AND pid <> pg_backend_pid()")
        cursor.execute(f"DROP TABLE IF EXISTS {postcount.TABLE}")
