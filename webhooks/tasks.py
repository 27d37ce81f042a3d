"""Celery tasks of the webhooks: thin wrappers around `delivery` (idempotent: a duplicate or
early run finds nothing due and sends nothing)."""
from __future__ import annotations

from common.queues import LIFECYCLE, WEBHOOKS
from common.tasks import task
from webhooks import delivery


# Deliveries wait on users' receivers.
@task(name="webhooks.deliver", queue=WEBHOOKS)
def deliver_webhook(delivery_id: int) -> str | None:
    return delivery.attempt(delivery_id)


@task(name="webhooks.redrive", queue=LIFECYCLE)
def redrive() -> int:
    return delivery.redrive()
