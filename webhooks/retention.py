"""What the webhooks forget: finished deliveries (succeeded or given up) and their attempts after
RETENTION_DELIVERIES_DAYS (a common.retention purger), and what they hold of a meeting its user
deleted (a meetings.retention redaction step). Both registered in WebhooksConfig.ready."""
from __future__ import annotations

import json
from datetime import timedelta

from django.conf import settings
from django.utils import timezone

from common import retention
from meetings.payloads import serialized
from meetings.retention import redacted_payload
from webhooks.models import DeliveryStatus, WebhookAttempt, WebhookDelivery

FINISHED = (DeliveryStatus.SUCCEEDED, DeliveryStatus.FAILED)
GIVEN_UP_FOR_REDACTION = "not sent: the meeting was deleted by its user"


def purge_deliveries(batch_size: int) -> int:
    """Delete up to `batch_size` finished deliveries created more than RETENTION_DELIVERIES_DAYS
    ago, with their attempts; returns how many deliveries."""
    cutoff = timezone.now() - timedelta(days=settings.RETENTION_DELIVERIES_DAYS)
    return retention.delete_rows(WebhookDelivery.objects.filter(status__in=FINISHED, created_at__lt=cutoff),
                                 batch_size)


def redact_deliveries(meeting) -> None:
    """The meeting's deliveries keep their ids and states but lose the meeting's data (the payload
    is stubbed as its event is) and the receivers' answers; one not finished yet (pending, or held
    for a disabled endpoint) is given up, not sent."""
    now = timezone.now()
    for delivery in WebhookDelivery.objects.select_for_update().filter(meeting=meeting):
        delivery.payload = serialized(redacted_payload(json.loads(delivery.payload)))
        delivery.last_response_body = ""
        if delivery.status not in FINISHED:
            delivery.status = DeliveryStatus.FAILED
            delivery.next_attempt_at = None
            delivery.held_by = None
            delivery.last_error = GIVEN_UP_FOR_REDACTION
        delivery.updated_at = now
        delivery.save()
    WebhookAttempt.objects.filter(delivery__meeting=meeting).update(response_body="")
