"""A user's event log: every applied transition of their meetings, as the `meeting.status_change`
event webhooks deliver (the same id, the same body), in transition order, after an opaque cursor.

- Ids: an event's id is derived from its transition (`event_id`); the webhook outbox gives the
  delivery the same id (X-Webhook-Id), so a consumer of both de-duplicates on it. Deliveries made
  before ids were derived keep theirs: the log reads a transition's delivery id when it has one.
- Cursors: the transition id, signed for the user (SECRET_KEY, salted with the user id): stable
  across requests, not forgeable, and never valid for another user's log.
- Settled order (`page`): a transaction that took a lower transition id may commit after one that
  took a higher id; a consumer paging by cursor would skip the late one for good. So a page lists
  only ids every one of whose predecessors is final. Every transaction takes its xid before a
  transition id (lifecycle locks or writes the meeting row first, create_meeting inserts the
  meeting first). The reader notes the last id taken (S), then takes an xid of its own (N): every
  transaction that took an id <= S got its xid before N. Once no transaction older than N runs
  (the snapshot's xmin passed N), every id <= S is committed or never will be, and the page lists
  ids up to S. That takes one commit's time, unless some writing transaction of the PostgreSQL
  cluster runs long: then the page waits up to EVENTS_SETTLE_WAIT_SECONDS and comes back empty
  (ask again with the same cursor).
- Horizon (`served_after`): the retention job deletes old meetings' transitions
  (meetings/retention.py) and raises the user's horizon past them. The log is served after the
  horizon: no cursor means from there, and a cursor before it is refused (`CursorExpired`, 410 with
  the oldest cursor served) rather than silently skipping what was deleted.
- Live (`publish`): after commit, each applied transition is published on the user's channel
  with its event; `GET /events/stream` (meetings/api/events.py) subscribes, replays the log
  (`replay`: every committed row, settled or not), then passes the published ones, skipping what
  the replay sent.
"""
from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from typing import Iterator

from django.conf import settings
from django.core import signing
from django.db import connection

from meetings.payloads import STATUS_CHANGE, serialized, status_change_event
from meetings.models import EventLogHorizon, MeetingTransition

# uuid5 namespace of event ids (fixed: ids must not change between releases).
EVENT_NAMESPACE = uuid.UUID("6f1c2a44-3c5e-4a57-9d0e-5b8f3b7a2e11")
START = 0  # the position before every event

class InvalidCursor(ValueError):
    pass


class CursorExpired(Exception):
    """A cursor from before the user's horizon: events after it were deleted by retention."""

    def __init__(self, oldest: int):
        super().__init__(f"cursor before the horizon {oldest}")
        self.oldest = oldest


@dataclass(frozen=True)
class Event:
    position: int  # the transition id
    id: str
    body: str  # the event's JSON text, as webhooks send it

    @property
    def type(self) -> str:
        return STATUS_CHANGE

    def item(self, user_id: int) -> dict:
        """The event as `GET /events` lists it and the stream's `data:` carries it."""
        return {"id": self.id, "cursor": cursor(user_id, self.position), "event": self.type,
                "payload": json.loads(self.body)}


def event_id(transition_id: int) -> str:
    return str(uuid.uuid5(EVENT_NAMESPACE, f"{STATUS_CHANGE}:{transition_id}"))


def user_channel(user_id: int) -> str:
    return f"bm:user:{user_id}:events"


def _signer(user_id: int) -> signing.Signer:
    return signing.Signer(salt=f"botmanager.events.cursor.{user_id}")


def cursor(user_id: int, position: int) -> str:
    return _signer(user_id).sign(signing.b62_encode(position))


def position(user_id: int, value: str | None) -> int:
    """The position a cursor of this user names; START for none. InvalidCursor otherwise."""
    if value is None or value == "":
        return START
    try:
        number = signing.b62_decode(_signer(user_id).unsign(value))
    except (signing.BadSignature, ValueError) as exc:
        raise InvalidCursor("Invalid cursor: use a cursor this API returned to you.") from exc
    if number < START:
        raise InvalidCursor("Invalid cursor: use a cursor this API returned to you.")
    return number


def horizon(user_id: int) -> int:
    """The position after which the user's log is whole (START until retention deleted some)."""
    found = EventLogHorizon.objects.filter(user_id=user_id).values_list("position", flat=True).first()
    return START if found is None else found


def served_after(user_id: int, after: int, *, given: bool) -> int:
    """Where to read the log from for a request starting after `after` (`given`: a cursor was
    sent; none means from the oldest event served). CursorExpired for a cursor before the horizon."""
    floor = horizon(user_id)
    if after >= floor:
        return after
    if not given:
        return floor
    raise CursorExpired(floor)


def page(user_id: int, after: int, limit: int, *, settled: bool = True) -> list[Event]:
    """The user's next `limit` events after position `after`, oldest first. `settled`: only ids
    whose predecessors are all final (see the module docstring; read in autocommit, outside any
    transaction). Otherwise every committed one."""
    rows = MeetingTransition.objects.filter(user_id=user_id, applied=True, id__gt=after)
    if settled:
        last = settled_position()
        if last is None or last <= after:
            return []
        rows = rows.filter(id__lte=last)
    rows = list(rows.order_by("id").values_list("id", "event", "webhook_deliveries__webhook_id",
                                                "webhook_deliveries__payload")[:limit])
    rebuilt = _rebuilt([tid for tid, body, _id, delivered in rows if not body and not delivered])
    return [Event(tid, str(webhook_id) if webhook_id else event_id(tid), body or delivered or rebuilt[tid])
            for tid, body, webhook_id, delivered in rows]


def within_bytes(events: list[Event], max_bytes: int) -> list[Event]:
    """The first of `events` whose bodies come to at most `max_bytes` (UTF-8), the first one always:
    a page of large meetings stays bounded, and a cursor after its last event loses none."""
    total = 0
    for count, event in enumerate(events):
        total += len(event.body.encode())
        if total > max_bytes and count:
            return events[:count]
    return events


def settled_position() -> int | None:
    """The last transition id taken before now, once every id up to it is final; None when that
    takes longer than EVENTS_SETTLE_WAIT_SECONDS."""
    table = MeetingTransition._meta.db_table
    with connection.cursor() as cursor:
        # The sequence's last value is not transactional: ids taken by transactions still running
        # count (its cache is 1: ids are taken in order).
        cursor.execute("SELECT pg_sequence_last_value(pg_get_serial_sequence(%s, 'id')::regclass)", [table])
        last = cursor.fetchone()[0] or START
        # A separate statement: this xid is taken after `last` was read.
        cursor.execute("SELECT pg_current_xact_id()")
        (mine,) = cursor.fetchone()
        deadline = time.monotonic() + settings.EVENTS_SETTLE_WAIT_SECONDS
        pause = 0.002
        while True:
            cursor.execute("SELECT pg_snapshot_xmin(pg_current_snapshot()) > %s::xid8", [mine])
            if cursor.fetchone()[0]:
                return last
            if time.monotonic() + pause > deadline:
                return None
            time.sleep(pause)  # a gevent worker's other clients go on meanwhile
            pause = min(pause * 2, 0.1)


def replay(user_id: int, after: int, batch: int) -> Iterator[Event]:
    """Every committed event after `after`, in batches of `batch` rows."""
    while events := page(user_id, after, batch, settled=False):
        yield from events
        after = events[-1].position


def _rebuilt(transition_ids: list[int]) -> dict[int, str]:
    """Bodies of transitions recorded before events were stored with them (and without a webhook
    delivery): built from the meeting as it is now."""
    if not transition_ids:
        return {}
    records = MeetingTransition.objects.select_related("meeting").filter(pk__in=transition_ids)
    return {r.pk: serialized(status_change_event(r.meeting, r)) for r in records}


# A published message: '{"position":<transition id>,"event":<the event body>}'.
_PREFIX, _MIDDLE = '{"position":', ',"event":'


def publish(meeting, record: MeetingTransition, pipe) -> None:
    """The applied transition `record` on its user's channel (a lifecycle notifier: after commit,
    into the pipeline every notifier of the transition shares)."""
    pipe.publish(user_channel(record.user_id), f"{_PREFIX}{record.pk}{_MIDDLE}{record.event}}}")


def published(message: str) -> Event:
    """The event a `publish` message carries (its body cut out as sent, not parsed)."""
    if not (message.startswith(_PREFIX) and message.endswith("}")):
        raise ValueError(f"not an event message: {message[:80]!r}")
    number, _sep, body = message[len(_PREFIX):-1].partition(_MIDDLE)
    return Event(int(number), event_id(int(number)), body)
