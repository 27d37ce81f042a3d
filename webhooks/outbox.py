"""The outbox: webhook events are rows written in the transaction that caused them.

`record_status_change` hears every applied transition in its transaction, right after its record
(a lifecycle listener); `record_final` is a post-meeting step (both registered in
WebhooksConfig.ready). A rolled back transition leaves no row; a committed one always has its row,
and the delivery task is enqueued on commit (`delivery.enqueue`; a lost enqueue is re-driven by
`delivery.redrive`). Nothing is recorded for a user without a webhook URL.
"""
from __future__ import annotations

import logging
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from meetings.events import log as events
from meetings.payloads import meeting_response, serialized
from webhooks import delivery as delivery_module
from webhooks.models import FINAL_EVENTS, WebhookDelivery, WebhookEvent

log = logging.getLogger(__name__)


def record_status_change(meeting, record) -> WebhookDelivery | None:
    """`meeting.status_change` for the applied transition `record` (a saved MeetingTransition): the
    event the record holds, under the id the event log gives it."""
    if not _has_webhook(meeting):
        return None
    return _record(meeting, WebhookEvent.STATUS_CHANGE, record.event, transition=record,
                   webhook_id=events.event_id(record.pk))


def record_final(meeting) -> WebhookDelivery | None:
    """`meeting.completed` or `meeting.failed`, once per meeting (post-meeting step: `meeting` is
    terminal and locked)."""
    if not meeting.is_terminal or not _has_webhook(meeting):
        return None
    if WebhookDelivery.objects.filter(meeting=meeting, event__in=FINAL_EVENTS).exists():
        return None
    event = WebhookEvent.COMPLETED if meeting.status == "completed" else WebhookEvent.FAILED
    return _record(meeting, event, serialized({"event": event.value, "meeting": meeting_response(meeting)}))


def _has_webhook(meeting) -> bool:
    # lifecycle loads the user with the locked meeting row: no extra query on the callback path.
    return bool(meeting.user.webhook_url)


def _record(meeting, event: WebhookEvent, payload: str, transition=None, **fields) -> WebhookDelivery:
    now = timezone.now()
    delivery = WebhookDelivery.objects.create(
        event=event, user_id=meeting.user_id, meeting=meeting, transition=transition, **fields,
        # Serialized once: every attempt sends and signs exactly these bytes (ASCII-only JSON).
        payload=payload,
        next_attempt_at=now, give_up_at=now + timedelta(seconds=settings.WEBHOOK_RETRY_WINDOW_SECONDS),
    )
    transaction.on_commit(lambda: delivery_module.enqueue(delivery.pk), robust=True)
    return delivery
