"""A user's events delivered again, on their request (POST /user/webhook/redeliver): chosen by
delivery id, or as a range of their event log (the cursors of /events).

Each event goes again with its original id (X-Webhook-Id) and body, so a receiver de-duplicates
it; an event of the range that never had a delivery (no webhook was set then) gets one, under the
id the event log gives it. A redelivered delivery is pending again with a fresh retry window; it
goes through the same per-user cap and back-off as a live one: the rows are made due, and the
user's free slots start the first of them (each finished attempt starts the next).
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

from common.domain_errors import DomainError
from meetings.events import log as events
from meetings.models import MeetingTransition
from webhooks import delivery, health
from webhooks.models import DeliveryStatus, WebhookDelivery, WebhookEvent


class NoWebhook(DomainError):
    http_status = 409


class InvalidRequest(ValueError):
    """Refused input (a 422 on the field named)."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


class UnknownDeliveries(DomainError):
    http_status = 404


@dataclass
class Queued:
    ids: list[int] = field(default_factory=list)  # the deliveries made due
    created: int = 0  # of them, new rows (events of the range that had no delivery)
    skipped: list[int] = field(default_factory=list)  # an attempt of theirs is running: left alone

    def answer(self) -> dict:
        return {"queued": len(self.ids), "ids": self.ids, "created": self.created, "skipped": self.skipped}


def check_can_send(user) -> None:
    if not user.webhook_url:
        raise NoWebhook("No webhook is set: set one with PUT /user/webhook first.")
    if health.is_disabled(user):
        raise NoWebhook("Your webhook endpoint is disabled after failing for too long (GET /user/webhook "
                        "says since when): fix the receiver, then re-enable it with PUT /user/webhook.")


def _too_many(field: str, count: int) -> InvalidRequest:
    return InvalidRequest(field, f"{count} deliveries asked for; at most {settings.WEBHOOK_REDELIVER_MAX} per request "
                   "(WEBHOOK_REDELIVER_MAX): ask for a smaller range.")


def by_ids(user, ids: list[int]) -> Queued:
    check_can_send(user)
    wanted = list(dict.fromkeys(ids))
    if len(wanted) > settings.WEBHOOK_REDELIVER_MAX:
        raise _too_many("ids", len(wanted))
    # Another user's delivery is as unknown as one that does not exist.
    found = set(WebhookDelivery.objects.filter(user_id=user.pk, pk__in=wanted).values_list("pk", flat=True))
    missing = [i for i in wanted if i not in found]
    if missing:
        shown = ", ".join(map(str, missing[:20])) + (" ..." if len(missing) > 20 else "")
        raise UnknownDeliveries(f"No delivery of yours has the id {shown}: "
                                "see GET /user/webhook/deliveries.")
    return _requeue(user.pk, wanted, created=0)


def by_range(user, after: str | None, until: str | None) -> Queued:
    """Every event of the user's log after the cursor `after` up to the cursor `until` (included);
    no `until`: up to the latest. Raises InvalidRequest."""
    check_can_send(user)
    start = _position(user, "after", after)
    end = _position(user, "until", until) if until else None
    if end is not None and end < start:
        raise InvalidRequest("until", "until is before after: give the older cursor as after.")
    maximum = settings.WEBHOOK_REDELIVER_MAX
    # One more than allowed: enough to know the range is too large, without reading all of it.
    in_range = [e for e in events.page(user.pk, start, maximum + 1, settled=False)
                if end is None or e.position <= end]
    if len(in_range) > maximum:
        count = (MeetingTransition.objects.filter(user_id=user.pk, applied=True, id__gt=start)
                 .filter(Q() if end is None else Q(id__lte=end)).count())
        raise _too_many("after", count)
    positions = [e.position for e in in_range]
    with transaction.atomic():
        return _requeue_range(user.pk, in_range, positions)


def _position(user, name: str, value: str | None) -> int:
    try:
        return events.position(user.pk, value)
    except events.InvalidCursor as exc:
        raise InvalidRequest(name, f"{exc} (a cursor of GET /events)") from None


def _requeue_range(user_id: int, in_range: list[events.Event], positions: list[int]) -> Queued:
    existing = dict(WebhookDelivery.objects.filter(transition_id__in=positions).values_list("transition_id", "pk"))
    missing = [e for e in in_range if e.position not in existing]
    created = _create(user_id, missing)
    existing.update(created)
    return _requeue(user_id, [existing[p] for p in positions if p in existing], created=len(created))


def _create(user_id: int, missing: list[events.Event]) -> dict[int, int]:
    """Delivery rows for events that had none; {transition id: delivery id}."""
    if not missing:
        return {}
    meetings = dict(MeetingTransition.objects.filter(pk__in=[e.position for e in missing])
                    .values_list("pk", "meeting_id"))
    now = timezone.now()
    rows = [WebhookDelivery(event=WebhookEvent.STATUS_CHANGE, user_id=user_id, meeting_id=meetings.get(e.position),
                            transition_id=e.position, webhook_id=uuid.UUID(e.id), payload=e.body,
                            status=DeliveryStatus.PENDING, next_attempt_at=now,
                            give_up_at=now + timedelta(seconds=settings.WEBHOOK_RETRY_WINDOW_SECONDS))
            for e in missing]
    # A concurrent request that created the same rows wins (one row per transition): this one
    # requeues those.
    WebhookDelivery.objects.bulk_create(rows, ignore_conflicts=True)
    return dict(WebhookDelivery.objects.filter(transition_id__in=[e.position for e in missing])
                .values_list("transition_id", "pk"))


def _requeue(user_id: int, ids: list[int], *, created: int) -> Queued:
    queued = Queued(created=created)
    now = timezone.now()
    with transaction.atomic():
        rows = list(WebhookDelivery.objects.select_for_update().filter(pk__in=ids)
                    .values_list("pk", "claimed_until"))
        running = {pk for pk, claimed in rows if claimed is not None and claimed > now}
        queued.skipped = [pk for pk in ids if pk in running]
        queued.ids = [pk for pk in ids if pk not in running]
        WebhookDelivery.objects.filter(pk__in=queued.ids).update(
            status=DeliveryStatus.PENDING, next_attempt_at=now, claimed_until=None, held_by=None, delivered_at=None,
            give_up_at=now + timedelta(seconds=settings.WEBHOOK_RETRY_WINDOW_SECONDS),
            attempts_before_window=F("attempts"), updated_at=now)
        transaction.on_commit(lambda: delivery.send_due(user_id), robust=True)
    return queued
