"""The webhook outbox: one row per event, written in the transaction that caused it, and the
record of every delivery attempt."""
from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models
from django.db.models import Q

from meetings.payloads import STATUS_CHANGE


class WebhookEvent(models.TextChoices):
    STATUS_CHANGE = STATUS_CHANGE
    COMPLETED = "meeting.completed"
    FAILED = "meeting.failed"


FINAL_EVENTS = (WebhookEvent.COMPLETED, WebhookEvent.FAILED)


class DeliveryStatus(models.TextChoices):
    PENDING = "pending"
    SUCCEEDED = "succeeded"
    FAILED = "failed"  # given up: the row stays, as the dead letter a user can redeliver
    # Recorded while the user's endpoint is disabled, not sent: PUT /user/webhook releases them.
    HELD = "held"


class Endpoint(models.Model):
    """The health of one receiver URL as one user's deliveries see it, shared by all workers: after
    WEBHOOK_ENDPOINT_FAILURE_THRESHOLD consecutive failed attempts it backs off (`open_until`),
    and attempts to it wait instead of failing; one probe attempt goes through when that time
    has passed. An answer resets it. A row exists once the URL has failed for that user.

    Keyed by user and URL, never by URL alone: a user who points their webhook at another user's
    receiver and makes it fail backs off only their own deliveries."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="webhook_endpoints")
    url_hash = models.CharField(max_length=64)  # sha256 of the URL: URLs are long
    url = models.CharField(max_length=2048)
    consecutive_failures = models.PositiveIntegerField(default=0)
    # While in the future (and the failures reached the threshold): no attempt starts, except the
    # probe, whose lease this is while it runs.
    open_until = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True, default="")
    last_failure_at = models.DateTimeField(null=True, blank=True)
    last_success_at = models.DateTimeField(null=True, blank=True)
    # The first failure since the last success (any answer but a 2xx, or no answer): the endpoint
    # is disabled once this is WEBHOOK_ENDPOINT_DISABLE_AFTER_SECONDS old.
    failing_since = models.DateTimeField(null=True, blank=True)
    # Set: no attempt is made to this endpoint; its deliveries are held until PUT /user/webhook.
    disabled_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["user", "url_hash"], name="webhook_endpoint_user_url")]

    def __str__(self) -> str:
        return f"{self.url} ({self.user})"


class WebhookDelivery(models.Model):
    # The idempotency key, sent as X-Webhook-Id: the same on every attempt of this event, and for a
    # status change the id `GET /events` gives the same event (meetings/events.event_id).
    webhook_id = models.UUIDField(unique=True, default=uuid.uuid4, editable=False)
    event = models.CharField(max_length=32, choices=WebhookEvent.choices)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="webhook_deliveries")
    # Deleting an ended meeting must not lose its last events: the delivery keeps its payload.
    meeting = models.ForeignKey("meetings.Meeting", null=True, blank=True, on_delete=models.SET_NULL,
                                related_name="webhook_deliveries")
    transition = models.ForeignKey("meetings.MeetingTransition", null=True, blank=True,
                                   on_delete=models.SET_NULL, related_name="webhook_deliveries")
    # The exact JSON body, serialized once: every attempt sends (and signs) these bytes.
    payload = models.TextField()
    status = models.CharField(max_length=16, choices=DeliveryStatus.choices, default=DeliveryStatus.PENDING)
    attempts = models.PositiveIntegerField(default=0)  # all attempts made, ever
    # Attempts made before the current retry window (a redelivery opens a new one): the backoff
    # counts from there.
    attempts_before_window = models.PositiveIntegerField(default=0)
    # Pending: when the next attempt is due. The redrive job re-enqueues a delivery overdue by more
    # than its interval (its task was lost).
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    # Set while an attempt runs (its lease): no other attempt starts before it has passed.
    claimed_until = models.DateTimeField(null=True, blank=True)
    # The endpoint whose back-off deferred this delivery: its recovery makes the delivery due.
    held_by = models.ForeignKey(Endpoint, null=True, blank=True, on_delete=models.SET_NULL,
                                related_name="held_deliveries")
    # No retry is scheduled after this moment; set at creation and by a redelivery.
    give_up_at = models.DateTimeField()
    url = models.CharField(max_length=2048, blank=True, default="")  # of the last attempt
    last_response_code = models.PositiveIntegerField(null=True, blank=True)
    last_response_body = models.TextField(blank=True, default="")  # truncated
    last_error = models.TextField(blank=True, default="")
    last_attempt_at = models.DateTimeField(null=True, blank=True)
    delivered_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = "webhook delivery"
        verbose_name_plural = "webhook deliveries"
        constraints = [
            # One status_change per applied transition, one final event per meeting.
            models.UniqueConstraint(fields=["transition"], condition=Q(transition__isnull=False),
                                    name="webhook_one_per_transition"),
            models.UniqueConstraint(fields=["meeting"],
                                    condition=Q(event__in=[e.value for e in FINAL_EVENTS], meeting__isnull=False),
                                    name="webhook_one_final_per_meeting"),
        ]
        indexes = [
            models.Index(fields=["next_attempt_at"], name="webhook_pending_due",
                         condition=Q(status="pending")),
            models.Index(fields=["status", "-created_at"], name="webhook_status_created"),
            # A user's attempts in flight (the per-user cap), and their waiting deliveries.
            models.Index(fields=["user", "claimed_until"], name="webhook_user_claimed",
                         condition=Q(claimed_until__isnull=False)),
            models.Index(fields=["user", "next_attempt_at"], name="webhook_user_pending_due",
                         condition=Q(status="pending")),
            # GET /user/webhook/deliveries: a user's newest first, a page after a cursor.
            models.Index(fields=["user", "-id"], name="webhook_user_newest"),
        ]

    def __str__(self) -> str:
        return f"{self.event} #{self.pk} [{self.status}]"


class WebhookAttempt(models.Model):
    """One HTTP attempt of a delivery (append-only)."""

    delivery = models.ForeignKey(WebhookDelivery, on_delete=models.CASCADE, related_name="attempt_log")
    number = models.PositiveIntegerField()
    url = models.CharField(max_length=2048, blank=True, default="")
    started_at = models.DateTimeField()
    duration_ms = models.PositiveIntegerField(default=0)
    response_code = models.PositiveIntegerField(null=True, blank=True)
    response_body = models.TextField(blank=True, default="")  # truncated
    error = models.TextField(blank=True, default="")
    # What the attempt decided: succeeded, retry, or failed.
    outcome = models.CharField(max_length=16)

    class Meta:
        ordering = ["id"]
        constraints = [models.UniqueConstraint(fields=["delivery", "number"], name="webhook_attempt_number")]

    def __str__(self) -> str:
        return f"attempt {self.number} of delivery {self.delivery_id}: {self.response_code or self.error}"
