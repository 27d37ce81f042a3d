"""Webhook test fixtures: a real HTTP receiver on localhost, a user whose webhook points at it,
short delivery timings, and (for the tests that need one) a real Celery worker in this process."""
from __future__ import annotations

import contextlib
import itertools
import uuid

import pytest

from tests.support import close_other_connections
from tests.webhooks.receiver import Receiver


def new_meeting(user, **fields):
    """tests.factories.make_meeting with an id of its own: the factory's ids repeat after its
    1000th meeting ("abc-defg-1000"[:12]), and a user's live meetings must differ."""
    from tests.factories import make_meeting

    fields.setdefault("native_meeting_id", f"wh-{next(_ids):06d}-{uuid.uuid4().hex[:8]}")
    return make_meeting(user, **fields)


_ids = itertools.count(1)


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.down()


@pytest.fixture(autouse=True)
def fast_webhooks(settings):
    settings.WEBHOOK_TIMEOUT_SECONDS = 2
    settings.WEBHOOK_BACKOFF_BASE_SECONDS = 0.2
    settings.WEBHOOK_BACKOFF_MAX_SECONDS = 1
    settings.WEBHOOK_RETRY_WINDOW_SECONDS = 120
    settings.WEBHOOK_REDRIVE_INTERVAL_SECONDS = 1
    settings.WEBHOOK_ALLOW_PRIVATE_ADDRESSES = True
    settings.WEBHOOK_CAP_RETRY_SECONDS = 0.5
    settings.WEBHOOK_ENDPOINT_BACKOFF_SECONDS = 0.5
    # The endpoint back-off has tests of its own (test_fairness.py); elsewhere it would turn the
    # attempts those tests count into deferrals.
    settings.WEBHOOK_ENDPOINT_FAILURE_THRESHOLD = 1000
    return settings


@pytest.fixture
def hook_user(db, receiver):
    """A user with a webhook to the receiver; `hook_user.secret` is their signing secret."""
    from accounts import webhook
    from tests.factories import make_user

    user = make_user()
    _url, user.secret = webhook.set_webhook(user, receiver.url)
    user.refresh_from_db()
    return user


@pytest.fixture
def worker(transactional_db):
    """A real Celery worker (threads) consuming the test broker while the test runs."""
    purge_broker()
    with running_worker():
        yield


@contextlib.contextmanager
def running_worker(concurrency: int = 4):
    from celery.contrib.testing.worker import start_worker

    from botmanager.celery import app

    try:
        with start_worker(app, pool="threads", concurrency=concurrency, perform_ping_check=False, shutdown_timeout=10,
                          loglevel="WARNING"):
            yield
    finally:
        purge_broker()
        close_other_connections()


def purge_broker() -> int:
    """Drop every task waiting in the test broker, in every queue (tasks of earlier tests, or a
    "lost" task)."""
    from botmanager.celery import app

    with app.connection_for_write() as conn:
        return sum(conn.default_channel.queue_purge(name) or 0 for name in queue_names())


def queue_names() -> list[str]:
    from botmanager.celery import app

    return sorted({q.name for q in app.conf.task_queues or ()} | {app.conf.task_default_queue})


def delivery_queue() -> str:
    """The queue the webhooks.deliver task is routed to."""
    from botmanager.celery import app

    return app.amqp.router.route({}, "webhooks.deliver")["queue"].name
