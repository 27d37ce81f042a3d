"""Idempotency keys: the first answer to a request, kept per user and key for a while, so that a
client that retries (after a timeout, a dropped connection) gets that answer again instead of a
second bot. No web framework here: idempotency/http.py is the views' side.

A key is claimed by one insert on the unique (user, key) (ON CONFLICT DO NOTHING), a key already
there read in a short transaction that locks its record: of two requests with one key exactly one
does the work, whichever web worker or host each reaches. The work then runs in its own
transactions, as without a key. While the first request
runs, the same key answers 409 (we do not hold a worker waiting for it); a holder that crashed
lets the key go when its lease (IDEMPOTENCY_LEASE_SECONDS) runs out.
Decision record: docs/decisions/0018-idempotency-keys-per-user-409-while-running.md.
"""
from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from common.domain_errors import DomainError
from idempotency.models import IdempotencyRecord

State = IdempotencyRecord.State
# Seconds a client is told to wait before asking again while the first request runs: our requests
# take milliseconds, so the answer is usually there at the first retry.
RUNNING_RETRY_AFTER = 1


class KeyStillRunning(DomainError):
    http_status = 409
    retry_after = RUNNING_RETRY_AFTER


class KeyReused(DomainError):
    http_status = 422


@dataclass(frozen=True)
class Claim:
    """This request holds the key: it does the work, then `finish`es or `release`s."""
    record_id: int
    token: uuid.UUID


@dataclass(frozen=True)
class Replay:
    """The key's request was answered: give that answer again."""
    status: int
    body: str  # JSON text, as first sent


def request_hash(data) -> str:
    """SHA-256 of the parsed body as canonical JSON: the same request sent with other whitespace or
    key order is the same request. ASCII escapes: a lone surrogate (valid JSON) must not fail here."""
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


def claim(user_id: int, key: str, endpoint: str, body_hash: str) -> Claim | Replay:
    """Take the key for this request, or say what became of the request that took it first.
    Raises KeyReused (another endpoint or body under this key) or KeyStillRunning."""
    for _ in range(3):
        now = timezone.now()
        token = uuid.uuid4()
        fresh = {"endpoint": endpoint, "request_hash": body_hash, "state": State.RUNNING, "lease_token": token,
                 "lease_until": now + timedelta(seconds=settings.IDEMPOTENCY_LEASE_SECONDS),
                 "response_status": None, "response_body": "", "created_at": now,
                 "expires_at": now + timedelta(seconds=settings.IDEMPOTENCY_KEY_TTL_SECONDS)}
        record_id = _insert_new(user_id, key, fresh)
        if record_id is not None:
            return Claim(record_id, token)
        with transaction.atomic():
            record = IdempotencyRecord.objects.select_for_update().filter(user_id=user_id, key=key).first()
            if record is None:
                continue  # freed since the insert met it: insert again
            if record.expires_at <= now or (record.state == State.RUNNING and record.lease_until <= now):
                # Expired (not purged yet), or its holder crashed: the key is free again.
                for field, value in fresh.items():
                    setattr(record, field, value)
                record.save()
                return Claim(record.pk, token)
            if record.endpoint != endpoint or record.request_hash != body_hash:
                raise KeyReused(
                    "This Idempotency-Key was already used for another request (another endpoint or body) in the "
                    f"last {settings.IDEMPOTENCY_KEY_TTL_SECONDS} seconds: send a new key for a new request.")
            if record.state == State.RUNNING:
                raise KeyStillRunning(
                    "A request with this Idempotency-Key is still being processed; retry after the Retry-After "
                    "seconds to get its answer.")
            return Replay(record.response_status, record.response_body)
    # Three rounds of insert-then-gone: the concurrent requests keep freeing the key. The client may retry.
    raise KeyStillRunning("A request with this Idempotency-Key is being processed; retry after the Retry-After "
                          "seconds.")


def _insert_new(user_id: int, key: str, fresh: dict) -> int | None:
    """The new record's id, or None when the user has a record under this key (committed, or
    committed by a concurrent insert this one waited for). One statement, no transaction of its
    own: the common case (a first request) costs one round trip."""
    values = {"user_id": user_id, "key": key, **fresh, "lease_token": str(fresh["lease_token"])}
    quote = connection.ops.quote_name
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {quote(IdempotencyRecord._meta.db_table)} ({', '.join(map(quote, values))}) "
            f"VALUES ({', '.join(['%s'] * len(values))}) "
            f"ON CONFLICT ({quote('user_id')}, {quote('key')}) DO NOTHING RETURNING {quote('id')}",
            list(values.values()))
        row = cursor.fetchone()
    return None if row is None else row[0]


def keeps(status: int) -> bool:
    """An answer the key keeps: a success, or a 4xx that decides the request. A 422 (invalid input),
    429 (rate limited) or 5xx frees the key: the same request may succeed when sent again."""
    return 200 <= status < 300 or (400 <= status < 500 and status not in (422, 429))


def finish(claim_: Claim, status: int, body: str) -> None:
    """Keep the answer. A holder whose lease ran out and was taken over writes nothing."""
    IdempotencyRecord.objects.filter(pk=claim_.record_id, lease_token=claim_.token, state=State.RUNNING).update(
        state=State.DONE, response_status=status, response_body=body)


def release(claim_: Claim) -> None:
    """Free the key (the request may be sent again under it)."""
    IdempotencyRecord.objects.filter(pk=claim_.record_id, lease_token=claim_.token, state=State.RUNNING).delete()


def purge_expired_batch(batch_size: int) -> int:
    """Delete up to `batch_size` records past their expiry, oldest first; returns how many. One short
    statement per batch: the retention job calls it until it returns less than batch_size."""
    now = timezone.now()
    ids = list(IdempotencyRecord.objects.filter(expires_at__lte=now).order_by("expires_at")
               .values_list("pk", flat=True)[:batch_size])
    if not ids:
        return 0
    # expires_at again: a record taken over since it was listed has a new expiry and stays.
    deleted, _ = IdempotencyRecord.objects.filter(pk__in=ids, expires_at__lte=now).delete()
    return deleted
