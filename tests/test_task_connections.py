"""Celery workers keep their database connection from one task to the next
(patches/task_connections.py): a connect and a SCRAM authentication per task had made the
lifecycle pool spend more than half its time connecting in a storm of stops."""
from __future__ import annotations

import queue

import pytest
from celery import shared_task
from django.db import connection

from tests.support import close_other_connections
from tests.webhooks.conftest import purge_broker

_backend_pids: queue.Queue = queue.Queue()


@shared_task(name="tests.record_backend_pid")
def record_backend_pid() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        _backend_pids.put(cursor.fetchone()[0])


@pytest.fixture
def one_thread_worker(transactional_db):
    """A real worker with one thread, so consecutive tasks run on the same thread's connection."""
    from celery.contrib.testing.worker import start_worker

    from botmanager.celery import app

    purge_broker()
    while not _backend_pids.empty():
        _backend_pids.get_nowait()
    try:
        with start_worker(app, pool="threads", concurrency=1, perform_ping_check=False, shutdown_timeout=10,
                          loglevel="WARNING"):
            yield
    finally:
        purge_broker()
        close_other_connections()


def run_and_get_backend_pid() -> int:
    record_backend_pid.delay()
    return _backend_pids.get(timeout=15)


def test_consecutive_tasks_use_the_same_database_connection(one_thread_worker):
    first = run_and_get_backend_pid()

    assert [run_and_get_backend_pid() for _ in range(3)] == [first, first, first]


def test_a_task_after_the_database_dropped_the_connection_reconnects_instead_of_failing(one_thread_worker):
    first = run_and_get_backend_pid()
    with connection.cursor() as cursor:  # what a database restart does to the worker's session
        cursor.execute("SELECT pg_terminate_backend(%s)", [first])

    second = run_and_get_backend_pid()

    assert second != first
