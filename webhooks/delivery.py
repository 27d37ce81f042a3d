"""Delivering outbox rows: claim, sign, send one attempt, record it, schedule the next.

At least once, never twice at the same time: an attempt starts only after claiming the pending
row under its lock (`claimed_until` is the lease of the running attempt, `attempts` its number),
so a duplicate or early task finds nothing due and does nothing, and a delivery that succeeded
or failed is never sent again (except by an explicit `redeliver`). Each attempt is recorded
(WebhookAttempt) with its answer. A retry is scheduled twice over: a countdown task, and the
row's `next_attempt_at`, which the redrive job watches in case that task is lost.

Each attempt goes to the user's current webhook URL, signed with their current secret (a rotated
secret signs the retries too). The secret is never logged, stored elsewhere or shown.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from urllib.parse import urlsplit

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from accounts.webhook import is_private_address

from . import outbox, policy, sender, signing
from .models import DeliveryStatus, WebhookAttempt, WebhookDelivery
from .policy import Verdict

log = logging.getLogger(__name__)

# A task may run this much before the row's due time (clock differences between hosts).
EARLY_TOLERANCE = timedelta(seconds=1)


@dataclass(frozen=True)
class Claim:
    delivery_id: int
    number: int
    webhook_id: str
    event: str
    url: str
    payload: str
    started_at: datetime
    secret: str = field(repr=False)
    problem: str = ""  # set: the attempt cannot be made (no URL, a forbidden address)


def lease_seconds() -> float:
    """How long a claimed attempt may take before another may start: the attempt's deadline
    (WEBHOOK_TIMEOUT_SECONDS), then a margin (name resolution, recording)."""
    return settings.WEBHOOK_TIMEOUT_SECONDS + 30


def attempt(delivery_id: int) -> str | None:
    """Make the due attempt of a pending delivery. Returns the attempt's verdict, or None when
    there was nothing to do (unknown, not pending, not due, or another attempt is running)."""
    claim = _claim(delivery_id)
    if claim is None:
        return None
    if claim.problem:
        result = sender.Result(None, error=claim.problem)
        verdict = Verdict.FAILED
    else:
        result = _send(claim)
        verdict = policy.classify(result.code, permanent_error=result.permanent)
    return _record(claim, result, verdict).value


def _claim(delivery_id: int) -> Claim | None:
    with transaction.atomic():
        delivery = (WebhookDelivery.objects.select_for_update(skip_locked=True, of=("self",))
                    .select_related("user").filter(pk=delivery_id, status=DeliveryStatus.PENDING).first())
        now = timezone.now()
        if delivery is None or not _due(delivery, now):
            return None
        url, secret = delivery.user.webhook_url, delivery.user.webhook_secret
        problem = "" if url and secret else "the user has no webhook URL or secret any more"
        delivery.attempts += 1
        delivery.claimed_until = now + timedelta(seconds=lease_seconds())
        delivery.last_attempt_at = now
        delivery.url = url
        delivery.save(update_fields=["attempts", "claimed_until", "last_attempt_at", "url", "updated_at"])
    return Claim(delivery.pk, delivery.attempts, str(delivery.webhook_id), delivery.event, url,
                 delivery.payload, now, secret, problem)


def _due(delivery: WebhookDelivery, now: datetime) -> bool:
    if delivery.claimed_until is not None and delivery.claimed_until > now:
        return False  # an attempt is running
    return delivery.next_attempt_at is None or delivery.next_attempt_at <= now + EARLY_TOLERANCE


def _send(claim: Claim) -> sender.Result:
    body = claim.payload.encode("utf-8")
    timestamp = str(int(time.time()))
    headers = {
        "Content-Type": "application/json",
        "X-Webhook-Id": claim.webhook_id,
        "X-Webhook-Event": claim.event,
        "X-Webhook-Attempt": str(claim.number),
        "X-Webhook-Timestamp": timestamp,
        "X-Webhook-Signature": signing.signature(claim.secret, timestamp, body),
    }
    # The private-address guard is applied by the sender to the address it connects to: the name
    # may resolve elsewhere now than when the URL was set.
    return sender.post(claim.url, body, headers, settings.WEBHOOK_TIMEOUT_SECONDS,
                       connect_timeout=settings.WEBHOOK_CONNECT_TIMEOUT_SECONDS,
                       refuse_address=None if settings.WEBHOOK_ALLOW_PRIVATE_ADDRESSES else is_private_address)


def _record(claim: Claim, result: sender.Result, verdict: Verdict) -> Verdict:
    """Log the attempt and move the delivery on; returns the verdict (a retry past the window
    becomes a failure)."""
    now = timezone.now()
    retry_in = None
    with transaction.atomic():
        delivery = WebhookDelivery.objects.select_for_update().get(pk=claim.delivery_id)
        current = delivery.status == DeliveryStatus.PENDING and delivery.attempts == claim.number
        if verdict is Verdict.SUCCEEDED and delivery.status != DeliveryStatus.SUCCEEDED:
            # Delivered, even when this answer comes late (another attempt was started meanwhile,
            # or the row was given up): the receiver has it. A later answer only goes to the log.
            delivery.status = DeliveryStatus.SUCCEEDED
            delivery.delivered_at = now
            delivery.next_attempt_at = None
        elif current and verdict is Verdict.FAILED:
            delivery.status = DeliveryStatus.FAILED
            delivery.next_attempt_at = None
        elif current:
            delay = policy.backoff_delay(
                claim.number - delivery.attempts_before_window,
                base=settings.WEBHOOK_BACKOFF_BASE_SECONDS, cap=settings.WEBHOOK_BACKOFF_MAX_SECONDS,
                retry_after=policy.parse_retry_after(result.retry_after))
            if now + timedelta(seconds=delay) > delivery.give_up_at:
                delivery.status = DeliveryStatus.FAILED
                delivery.next_attempt_at = None
                verdict = Verdict.FAILED
            else:
                delivery.next_attempt_at = now + timedelta(seconds=delay)
                retry_in = delay
        else:
            # An attempt whose lease ran out and that another attempt (or an operator) overtook:
            # its answer is in the log; the row's state belongs to the newer attempt.
            _log_attempt(delivery, claim, result, verdict)
            log.info("webhook %s %s: late answer of attempt %d recorded", delivery.pk, claim.event, claim.number)
            return verdict
        _log_attempt(delivery, claim, result, verdict)
        delivery.claimed_until = None
        delivery.last_response_code = result.code
        delivery.last_response_body = result.body
        delivery.last_error = result.error
        delivery.save()
        if retry_in is not None:
            transaction.on_commit(lambda: outbox.enqueue(delivery.pk, countdown=retry_in), robust=True)
    _log(claim, result, delivery, retry_in)
    return verdict


def _log_attempt(delivery: WebhookDelivery, claim: Claim, result: sender.Result, verdict: Verdict) -> None:
    WebhookAttempt.objects.create(
        delivery=delivery, number=claim.number, url=claim.url, started_at=claim.started_at,
        duration_ms=result.duration_ms, response_code=result.code, response_body=result.body,
        error=result.error, outcome=verdict.value)


def _log(claim: Claim, result: sender.Result, delivery: WebhookDelivery, retry_in: float | None) -> None:
    # Host only: a URL's path or query may carry the receiver's own token. Never the secret.
    host = urlsplit(claim.url).hostname or "-"
    answer = result.code if result.code is not None else result.error
    if delivery.status == DeliveryStatus.SUCCEEDED:
        log.info("webhook %s %s: delivered to %s on attempt %d (%s)", delivery.pk, claim.event, host,
                 claim.number, answer)
    elif delivery.status == DeliveryStatus.FAILED:
        log.warning("webhook %s %s: failed on attempt %d to %s (%s); not retried", delivery.pk, claim.event,
                    claim.number, host, answer)
    else:
        log.info("webhook %s %s: attempt %d to %s got %s; retry in %.1fs", delivery.pk, claim.event,
                 claim.number, host, answer, retry_in or 0)


# --- Redrive and redelivery ------------------------------------------------------------------------
def overdue(now: datetime | None = None, limit: int = 500) -> list[int]:
    """Pending deliveries whose attempt is overdue by more than one redrive interval, or whose
    running attempt outlived its lease: their task was lost (a broker or worker outage)."""
    now = now or timezone.now()
    margin = timedelta(seconds=settings.WEBHOOK_REDRIVE_INTERVAL_SECONDS)
    return list(WebhookDelivery.objects.filter(status=DeliveryStatus.PENDING, next_attempt_at__lte=now - margin)
                .filter(Q(claimed_until__isnull=True) | Q(claimed_until__lte=now))
                .order_by("next_attempt_at").values_list("pk", flat=True)[:limit])


def redrive(now: datetime | None = None) -> int:
    """Enqueue the overdue deliveries again; a duplicate of a task that was only late is harmless."""
    ids = overdue(now)
    for delivery_id in ids:
        outbox.enqueue(delivery_id)
    if ids:
        log.info("webhooks: re-enqueued %d overdue deliveries", len(ids))
    return len(ids)


def redeliver(delivery_ids: list[int]) -> tuple[int, int]:
    """Send deliveries again now, with a fresh retry window (the admin action). A delivery whose
    attempt is running is left alone. Returns (redelivered, skipped)."""
    done, skipped = 0, 0
    with transaction.atomic():
        now = timezone.now()
        for delivery in WebhookDelivery.objects.select_for_update().filter(pk__in=delivery_ids).order_by("pk"):
            if delivery.claimed_until is not None and delivery.claimed_until > now:
                skipped += 1
                continue
            delivery.status = DeliveryStatus.PENDING
            delivery.next_attempt_at = now
            delivery.give_up_at = now + timedelta(seconds=settings.WEBHOOK_RETRY_WINDOW_SECONDS)
            delivery.attempts_before_window = delivery.attempts
            delivery.delivered_at = None
            delivery.save()
            transaction.on_commit(lambda pk=delivery.pk: outbox.enqueue(pk), robust=True)
            done += 1
    return done, skipped
