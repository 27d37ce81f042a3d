"""Celery tasks of the webhooks: thin wrappers around `delivery` (idempotent: a duplicate or
early run finds nothing due and sends nothing)."""
from __future__ import annotations

from celery import shared_task

from webhooks import delivery


@shared_task(name="webhooks.deliver")
def deliver_webhook(delivery_id: int) -> str | None:
    return delivery.attempt(delivery_id)


@shared_task(name="webhooks.redrive")
def redrive() -> int:
    return delivery.redrive()
