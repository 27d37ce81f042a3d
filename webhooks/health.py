"""A user's webhook endpoint as they see it: enabled or disabled, its last success and last error,
and re-enabling it.

An endpoint (webhooks.endpoints: one user's URL) whose every attempt has failed for
WEBHOOK_ENDPOINT_DISABLE_AFTER_SECONDS is disabled by the worker that records the failure; from
then on its deliveries are held (state `held`: recorded, not sent, never given up). Setting the
webhook again (PUT /user/webhook) re-enables every endpoint of the user and sends the held
deliveries to the URL set, each with a fresh retry window, through the per-user cap.
"""
from __future__ import annotations

from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from webhooks import delivery, endpoints
from webhooks.models import DeliveryStatus, Endpoint, WebhookDelivery

ENABLED, DISABLED = "enabled", "disabled"


def current_endpoint(user) -> Endpoint | None:
    """The endpoint row of the user's current URL (none until it has failed once)."""
    if not user.webhook_url:
        return None
    return Endpoint.objects.filter(user_id=user.pk, url_hash=endpoints.url_hash(user.webhook_url)).first()


def is_disabled(user) -> bool:
    endpoint = current_endpoint(user)
    return endpoint is not None and endpoint.disabled_at is not None


def status(user) -> dict:
    """What GET /user/webhook shows: never the secret."""
    endpoint = current_endpoint(user)
    # A healthy endpoint has no row (a success on it writes nothing): its last success is that of
    # the newest delivered delivery (read along the user's newest-first index, not all their rows).
    delivered = (WebhookDelivery.objects.filter(user_id=user.pk, status=DeliveryStatus.SUCCEEDED)
                 .order_by("-pk").values_list("delivered_at", flat=True).first())
    last_success = _latest(endpoint.last_success_at if endpoint else None, delivered)
    return {
        "webhook_url": user.webhook_url or None,
        "state": DISABLED if endpoint is not None and endpoint.disabled_at is not None else ENABLED,
        "disabled_at": endpoint.disabled_at if endpoint else None,
        "failing_since": endpoint.failing_since if endpoint else None,
        "last_success_at": last_success,
        "last_error": (endpoint.last_error or None) if endpoint and endpoint.last_failure_at else None,
        "last_error_at": endpoint.last_failure_at if endpoint else None,
        "held_deliveries": WebhookDelivery.objects.filter(user_id=user.pk, status=DeliveryStatus.HELD).count(),
    }


def _latest(*moments: datetime | None) -> datetime | None:
    known = [m for m in moments if m is not None]
    return max(known) if known else None


def reenable(user_id: int) -> int:
    """Enable every endpoint of the user again and release their held deliveries (due now, a
    fresh retry window). Returns how many were released."""
    now = timezone.now()
    with transaction.atomic():
        Endpoint.objects.filter(user_id=user_id, disabled_at__isnull=False).update(
            disabled_at=None, failing_since=None, consecutive_failures=0, open_until=None, updated_at=now)
        released = WebhookDelivery.objects.filter(user_id=user_id, status=DeliveryStatus.HELD).update(
            status=DeliveryStatus.PENDING, next_attempt_at=now, held_by=None, updated_at=now,
            give_up_at=now + timedelta(seconds=settings.WEBHOOK_RETRY_WINDOW_SECONDS),
            attempts_before_window=F("attempts"))
        if released:
            transaction.on_commit(lambda: delivery.send_due(user_id), robust=True)
    return released
