"""A user's webhook deliveries as they may see them: newest first, a page after an opaque cursor,
by state, each with its attempts.

What a user sees of an attempt is what their receiver did: when, the HTTP status or the class of
the connection error, how long, and the first ANSWER_CHARS characters of the answer. Never the
signing secret, never the body sent (they have it from /events, by the same id), never more of the
answer than that.

Cursors are the delivery id, signed for the user (SECRET_KEY, salted with the user id): another
user's cursor, or an edited one, is refused.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from django.core import signing
from django.db.models import F, Prefetch, Q

from webhooks.models import DeliveryStatus, WebhookAttempt, WebhookDelivery

ANSWER_CHARS = 200
PAGE_DEFAULT, PAGE_MAX = 50, 200

# The states a user sees. A pending delivery that has had an attempt in its current window is
# being retried.
PENDING, RETRYING, DELIVERED, GIVEN_UP, HELD = "pending", "retrying", "delivered", "given_up", "held"
STATES = (PENDING, RETRYING, DELIVERED, GIVEN_UP, HELD)

_retried = Q(attempts__gt=F("attempts_before_window"))
_BY_STATE = {
    PENDING: Q(status=DeliveryStatus.PENDING) & ~_retried,
    RETRYING: Q(status=DeliveryStatus.PENDING) & _retried,
    DELIVERED: Q(status=DeliveryStatus.SUCCEEDED),
    GIVEN_UP: Q(status=DeliveryStatus.FAILED),
    HELD: Q(status=DeliveryStatus.HELD),
}


class InvalidQuery(ValueError):
    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class Page:
    items: list[dict]
    next_cursor: str | None  # None: this was the last page


def _signer(user_id: int) -> signing.Signer:
    return signing.Signer(salt=f"botmanager.webhooks.deliveries.cursor.{user_id}")


def cursor(user_id: int, delivery_id: int) -> str:
    return _signer(user_id).sign(signing.b62_encode(delivery_id))


def position(user_id: int, value: str | None) -> int | None:
    """The delivery id a cursor of this user names (the page lists older ones); None for none."""
    if value is None or value == "":
        return None
    try:
        number = signing.b62_decode(_signer(user_id).unsign(value))
    except (signing.BadSignature, ValueError):
        raise InvalidQuery("after", "Invalid cursor: use a next_cursor this API returned to you.") from None
    if number < 1:
        raise InvalidQuery("after", "Invalid cursor: use a next_cursor this API returned to you.")
    return number


def page(user_id: int, *, after: str | None = None, limit: int = PAGE_DEFAULT, state: str | None = None) -> Page:
    """The user's deliveries, newest first, older than the cursor `after`, in `state` (one of
    STATES) if given. Raises InvalidQuery for a cursor that is not this user's."""
    before = position(user_id, after)
    size, wanted = limit, state
    rows = WebhookDelivery.objects.filter(user_id=user_id)
    if before is not None:
        rows = rows.filter(pk__lt=before)
    if wanted is not None:
        rows = rows.filter(_BY_STATE[wanted])
    attempts = WebhookAttempt.objects.order_by("number").only(
        "delivery_id", "number", "started_at", "duration_ms", "response_code", "response_body", "error")
    rows = list(rows.select_related("meeting").prefetch_related(Prefetch("attempt_log", queryset=attempts))
                .only("pk", "webhook_id", "event", "status", "attempts", "attempts_before_window", "created_at",
                      "next_attempt_at", "delivered_at", "meeting__platform", "meeting__native_meeting_id")
                .order_by("-pk")[:size + 1])
    more = len(rows) > size
    rows = rows[:size]
    return Page([item(d) for d in rows], cursor(user_id, rows[-1].pk) if more else None)


def state_of(d: WebhookDelivery) -> str:
    if d.status == DeliveryStatus.SUCCEEDED:
        return DELIVERED
    if d.status == DeliveryStatus.FAILED:
        return GIVEN_UP
    if d.status == DeliveryStatus.HELD:
        return HELD
    return RETRYING if d.attempts > d.attempts_before_window else PENDING


def item(d: WebhookDelivery) -> dict:
    meeting = None
    if d.meeting is not None:
        meeting = {"platform": d.meeting.platform, "native_meeting_id": d.meeting.native_meeting_id}
    return {
        "id": d.pk,
        "event_id": str(d.webhook_id),
        "event": d.event,
        "meeting": meeting,
        "state": state_of(d),
        "created_at": d.created_at,
        "next_attempt_at": d.next_attempt_at if d.status == DeliveryStatus.PENDING else None,
        "delivered_at": d.delivered_at,
        "attempts": [attempt(a) for a in d.attempt_log.all()],
    }


def attempt(a: WebhookAttempt) -> dict:
    return {
        "number": a.number,
        "at": a.started_at,
        "http_status": a.response_code,
        "error": error_class(a.error) if a.response_code is None else None,
        "duration_ms": a.duration_ms,
        "response": a.response_body[:ANSWER_CHARS],
    }


# sender._describe: "<exception class>: <message>".
_EXCEPTION = re.compile(r"^([A-Za-z_][\w.]*): ")


def error_class(error: str) -> str | None:
    """The kind of a connection error (webhooks.sender's texts), without its details."""
    if not error:
        return None
    if error in ("timeout", "connect timeout"):
        return error
    if error.startswith("TLS error"):
        return "TLS error"
    if "private or loopback address" in error:
        return "refused address"
    if error.startswith("the user has no webhook"):
        return "no webhook"
    match = _EXCEPTION.match(error)
    return match.group(1) if match else "connection error"
