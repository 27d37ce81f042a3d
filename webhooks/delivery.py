"""Delivering outbox rows: claim, sign, send one attempt, record it, schedule the next.

At least once, never twice at the same time: an attempt starts only after claiming the pending
row under its lock (`claimed_until` is the lease of the running attempt, `attempts` its number),
so a duplicate or early task finds nothing due and does nothing, and a delivery that succeeded
or failed is never sent again (except by an explicit `redeliver`). Each attempt is recorded
(WebhookAttempt) with its answer. A retry is scheduled twice over: a countdown task, and the
row's `next_attempt_at`, which the redrive job watches in case that task is lost.

Each attempt goes to the user's current webhook URL, signed with their current secret (a rotated
secret signs the retries too). The secret is never logged, stored elsewhere or shown.

No receiver may hold everyone's delivery threads: at most WEBHOOK_MAX_IN_FLIGHT_PER_USER attempts
of one user's deliveries run at a time (a delivery refused by the cap is not an attempt: it stays
pending; each finished attempt of the user's enqueues their next due deliveries at once, and the
capped delivery's own task comes back only when the first running attempt's lease ends, for an
attempt whose worker died), and an endpoint (a user's URL) that keeps failing backs off for that
user's deliveries only (webhooks.endpoints).
"""
from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from urllib.parse import urlsplit

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Count, Min, Q
from django.utils import timezone

from accounts.webhook import is_private_address
from common.queues import LIFECYCLE, WEBHOOKS
from common.tasks import task
from webhooks import endpoints, policy, sender, signing
from webhooks.models import DeliveryStatus, WebhookAttempt, WebhookDelivery
from webhooks.policy import Verdict

log = logging.getLogger(__name__)

# A task may run this much before the row's due time (clock differences between hosts).
EARLY_TOLERANCE = timedelta(seconds=1)


@dataclass(frozen=True)
class Claim:
    delivery_id: int
    user_id: int
    number: int
    webhook_id: str
    event: str
    url: str
    payload: str
    started_at: datetime
    secret: str = field(repr=False)
    problem: str = ""  # set: the attempt cannot be made (no URL)
    probe: bool = False  # the attempt its endpoint lets through after backing off


@dataclass(frozen=True)
class Held:
    """No attempt now, and none counted: the user's cap is full ("capped"), or the endpoint backs
    off ("deferred"). The delivery stays pending; its task comes back after `countdown`. Or the
    endpoint is disabled ("held"): the delivery is held, and no task comes back."""

    outcome: str
    countdown: float


CAPPED, DEFERRED, HELD = "capped", "deferred", "held"
# The key space of the per-user advisory lock ("whku"), apart from the sweep's.
USER_LOCK_CLASS = 0x77686B75


def lease_seconds() -> float:
    """How long a claimed attempt may take before another may start: the attempt's deadline
    (WEBHOOK_TIMEOUT_SECONDS), then a margin (name resolution, recording)."""
    return settings.WEBHOOK_TIMEOUT_SECONDS + 30


def enqueue(delivery_id: int, countdown: float | None = None) -> None:
    """Hand a delivery to the worker. A failure here loses nothing: the row stays pending and
    the redrive job finds it."""
    if countdown:
        attempt.apply_async((delivery_id,), countdown=countdown)
    else:
        attempt.delay(delivery_id)


# Deliveries wait on users' receivers: a queue of their own.
@task(name="webhooks.deliver", queue=WEBHOOKS)
def attempt(delivery_id: int) -> str | None:
    """Make the due attempt of a pending delivery. Returns the attempt's verdict; "capped" or
    "deferred" when it must wait (see Held); "held" when its endpoint is disabled; None when there was nothing to do (unknown, not
    pending, not due, or another attempt is running)."""
    claim = _claim(delivery_id)
    if claim is None:
        return None
    if isinstance(claim, Held) and claim.outcome == HELD:
        return HELD  # the endpoint is disabled: the delivery waits for PUT /user/webhook
    if isinstance(claim, Held):
        # Never dropped: the task comes back (a finished attempt of the user's may hand it a
        # slot sooner, and the redrive job is the backstop).
        enqueue(delivery_id, countdown=claim.countdown)
        return claim.outcome
    recovered = None
    if claim.problem:
        result = sender.Result(None, error=claim.problem)
        verdict = Verdict.FAILED
    else:
        result = _send(claim)
        verdict = policy.classify(result.code, permanent_error=result.permanent)
        recovered = endpoints.record(claim.user_id, claim.url, result, probe=claim.probe)
    verdict = _record(claim, result, verdict)
    if recovered is not None:
        _wake(recovered)
    _hand_off(claim.user_id)
    return verdict.value


def _claim(delivery_id: int) -> Claim | Held | None:
    with transaction.atomic():
        delivery = (WebhookDelivery.objects.select_for_update(skip_locked=True, of=("self",))
                    .select_related("user").filter(pk=delivery_id, status=DeliveryStatus.PENDING).first())
        now = timezone.now()
        if delivery is None or not _due(delivery, now):
            return None
        url, secret = delivery.user.webhook_url, delivery.user.webhook_secret
        problem = "" if url and secret else "the user has no webhook URL or secret any more"
        gate = endpoints.Gate()
        if not problem:  # an attempt that sends nothing takes no slot
            slot_frees_at = _cap_held_until(delivery.user_id, now)
            if slot_frees_at is not None:
                return Held(CAPPED, _capped_countdown(slot_frees_at, now))
            gate = endpoints.admit(delivery.user_id, url, now, lease_seconds())
            if gate.disabled:
                # Kept, not sent and not given up: re-enabling the endpoint releases it.
                delivery.status = DeliveryStatus.HELD
                delivery.next_attempt_at = None
                delivery.held_by_id = gate.endpoint_id
                delivery.save(update_fields=["status", "next_attempt_at", "held_by", "updated_at"])
                return Held(HELD, 0)
            if gate.defer_until is not None:
                delivery.next_attempt_at = gate.defer_until
                delivery.held_by_id = gate.endpoint_id
                delivery.save(update_fields=["next_attempt_at", "held_by", "updated_at"])
                return Held(DEFERRED, (gate.defer_until - now).total_seconds())
        delivery.attempts += 1
        delivery.claimed_until = now + timedelta(seconds=lease_seconds())
        delivery.last_attempt_at = now
        delivery.url = url
        delivery.held_by_id = None
        delivery.save(update_fields=["attempts", "claimed_until", "last_attempt_at", "url", "held_by", "updated_at"])
    return Claim(delivery.pk, delivery.user_id, delivery.attempts, str(delivery.webhook_id), delivery.event, url,
                 delivery.payload, now, secret, problem, probe=gate.probe)


def _cap_held_until(user_id: int, now: datetime) -> datetime | None:
    """None while the user has a free slot (fewer than WEBHOOK_MAX_IN_FLIGHT_PER_USER attempts hold
    a live claim); at the cap, when the first of those claims' leases ends. Claims of one user are
    serialized by a transaction-scoped advisory lock on the user id (not the user row, which
    POST /bots locks), so two claims cannot both see the last free slot."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(%s, %s)", [USER_LOCK_CLASS, user_id & 0x7FFFFFFF])
    claims = _in_flight_claims(user_id, now).aggregate(count=Count("pk"), first_end=Min("claimed_until"))
    if claims["count"] < settings.WEBHOOK_MAX_IN_FLIGHT_PER_USER:
        return None
    return claims["first_end"] or now  # a cap of 0 holds with no claim at all


def _capped_countdown(slot_frees_at: datetime, now: datetime) -> float:
    """When a capped delivery's own task comes back. A finished attempt hands its slot on at once
    (`_hand_off`), so this task is only for an attempt that never finishes (its worker died): due
    when the first of the user's running leases ends, never sooner than WEBHOOK_CAP_RETRY_SECONDS.
    Coming back every few seconds instead made a hanging receiver cost a task per pending delivery
    per interval: hundreds a second, for nothing, while every slot was held."""
    return max(settings.WEBHOOK_CAP_RETRY_SECONDS, (slot_frees_at - now).total_seconds())


def _in_flight_claims(user_id: int, now: datetime):
    return WebhookDelivery.objects.filter(user_id=user_id, claimed_until__gt=now)


def _in_flight(user_id: int, now: datetime) -> int:
    return _in_flight_claims(user_id, now).count()


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
            transaction.on_commit(lambda: enqueue(delivery.pk, countdown=retry_in), robust=True)
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


# --- Handing slots on ------------------------------------------------------------------------------
def _hand_off(user_id: int) -> None:
    """An attempt of the user's finished: enqueue their next due deliveries, as many as they have
    free slots, so a delivery refused by the cap goes as soon as a slot frees (not only when its
    own task comes back). A delivery that already has a task gets a duplicate: harmless.

    The deliveries handed on are drawn from the first few due ones, not always the very first:
    attempts finishing at the same moment each picked the same first row, all but one of their
    tasks found it claimed, and a user's backlog (a replay) went about one attempt at a time
    instead of their cap's worth. Every due row stays due, so any later hand-off can pick it."""
    now = timezone.now()
    free = settings.WEBHOOK_MAX_IN_FLIGHT_PER_USER - _in_flight(user_id, now)
    if free <= 0:
        return
    window = free + settings.WEBHOOK_MAX_IN_FLIGHT_PER_USER
    due = list(WebhookDelivery.objects
               .filter(user_id=user_id, status=DeliveryStatus.PENDING, next_attempt_at__lte=now)
               .filter(Q(claimed_until__isnull=True) | Q(claimed_until__lte=now))
               .order_by("next_attempt_at", "pk").values_list("pk", flat=True)[:window])
    for delivery_id in sorted(random.sample(due, min(free, len(due)))):
        enqueue(delivery_id)


def _wake(endpoint_id: int) -> None:
    """The endpoint answered again: the deliveries its back-off deferred are due now."""
    now = timezone.now()
    held = WebhookDelivery.objects.filter(held_by_id=endpoint_id, status=DeliveryStatus.PENDING)
    users = set(held.values_list("user_id", flat=True).distinct())
    held.update(held_by=None, next_attempt_at=now, updated_at=now)
    for user_id in users:
        _hand_off(user_id)


def send_due(user_id: int) -> None:
    """Start the user's due deliveries, as many as their cap allows now; each finished attempt
    starts the next ones (redelivery and re-enabling an endpoint make many due at once)."""
    _hand_off(user_id)


# --- Redrive and redelivery ------------------------------------------------------------------------
def overdue(now: datetime | None = None, limit: int = 500) -> list[int]:
    """Pending deliveries whose attempt is overdue by more than one redrive interval, or whose
    running attempt outlived its lease: their task was lost (a broker or worker outage)."""
    now = now or timezone.now()
    margin = timedelta(seconds=settings.WEBHOOK_REDRIVE_INTERVAL_SECONDS)
    return list(WebhookDelivery.objects.filter(status=DeliveryStatus.PENDING, next_attempt_at__lte=now - margin)
                .filter(Q(claimed_until__isnull=True) | Q(claimed_until__lte=now))
                .order_by("next_attempt_at").values_list("pk", flat=True)[:limit])


@task(name="webhooks.redrive", queue=LIFECYCLE)
def redrive(now: datetime | None = None) -> int:
    """Enqueue the overdue deliveries again; a duplicate of a task that was only late is harmless."""
    ids = overdue(now)
    for delivery_id in ids:
        enqueue(delivery_id)
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
            delivery.held_by = None
            delivery.save()
            transaction.on_commit(lambda pk=delivery.pk: enqueue(pk), robust=True)
            done += 1
    return done, skipped
