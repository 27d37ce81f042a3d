"""Per-endpoint back-off: a receiver URL that keeps failing is left alone for a while.

An endpoint is one user's URL: after WEBHOOK_ENDPOINT_FAILURE_THRESHOLD consecutive failed
attempts (network error, timeout, 408, 429, 5xx) of one user's deliveries to one URL, the endpoint
backs off: attempts to it
are deferred (the delivery stays pending, its next_attempt_at moves to the end of the back-off;
it is not an attempt, so it is never failed for it) until `open_until`. Then one attempt goes
through as the probe (the others wait for its answer); a failure backs off again, twice as long
(WEBHOOK_ENDPOINT_BACKOFF_SECONDS doubling, at most WEBHOOK_BACKOFF_MAX_SECONDS); any answer that
is not a retryable failure resets the endpoint and wakes the deliveries it deferred.

The state is a PostgreSQL row (Endpoint), shared by every worker and kept across restarts.

Why per user and URL, not per URL: the failures that back a URL off must be the ones of the
deliveries it holds back. Keyed by URL alone, a user who points their webhook at another user's
receiver and makes it fail (a payload it rejects with a 5xx, a flood it sheds) deferred that other
user's deliveries for up to WEBHOOK_BACKOFF_MAX_SECONDS. The price: a receiver shared by several
users that really is down is probed by each of them (threshold attempts per user, then one probe
per back-off period each), which the per-user cap on attempts in flight already bounds.
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from webhooks import policy
from webhooks.models import Endpoint
from webhooks.policy import Verdict
from webhooks.sender import Result

log = logging.getLogger(__name__)


def url_hash(url: str) -> str:
    return hashlib.sha256(url.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Gate:
    endpoint_id: int | None = None
    defer_until: datetime | None = None  # set: the endpoint backs off; no attempt now
    probe: bool = False  # the attempt allowed through after a back-off
    disabled: bool = False  # no attempt until the user re-enables the endpoint


def _of(user_id: int, url: str):
    return Endpoint.objects.filter(user_id=user_id, url_hash=url_hash(url))


def admit(user_id: int, url: str, now: datetime, probe_lease: float) -> Gate:
    """May an attempt of `user_id`'s delivery to `url` start now? Called inside the claim's
    transaction: a probe marks the endpoint (`open_until` = its lease) so that no second attempt
    goes with it."""
    threshold = settings.WEBHOOK_ENDPOINT_FAILURE_THRESHOLD
    # The common case, a healthy endpoint, costs one indexed read and takes no lock.
    if not _of(user_id, url).filter(Q(consecutive_failures__gte=threshold) | Q(disabled_at__isnull=False)).exists():
        return Gate()
    state = _of(user_id, url).select_for_update().first()
    if state is not None and state.disabled_at is not None:
        return Gate(state.pk, disabled=True)
    if state is None or state.consecutive_failures < threshold:
        return Gate()  # reset meanwhile
    if state.open_until is not None and state.open_until > now:
        return Gate(state.pk, defer_until=state.open_until)
    state.open_until = now + timedelta(seconds=probe_lease)
    state.save(update_fields=["open_until", "updated_at"])
    return Gate(state.pk, probe=True)


def record(user_id: int, url: str, result: Result, *, probe: bool) -> int | None:
    """Count the outcome of an attempt of `user_id`'s delivery for its endpoint. Returns the id
    of an endpoint this answer reset (its deferred deliveries are due again), else None."""
    now = timezone.now()
    verdict = policy.classify(result.code, permanent_error=result.permanent)
    if verdict is Verdict.RETRY:
        _failed(user_id, url, result, now)
        return None
    if verdict is Verdict.FAILED and result.code is not None:
        # An answer, so no back-off; but not a success: it counts towards disabling.
        _failed(user_id, url, result, now, backs_off=False)
    if result.code is not None:
        return _answered(user_id, url, now, success=verdict is Verdict.SUCCEEDED)
    if probe:
        # The probe sent nothing (a refused address): the next attempt may probe at once.
        _of(user_id, url).update(open_until=now)
    return None


def backoff_seconds(failures: int) -> float:
    """How long an endpoint with `failures` consecutive failures (at least the threshold) waits."""
    beyond = min(max(failures - settings.WEBHOOK_ENDPOINT_FAILURE_THRESHOLD, 0), 60)
    return min(settings.WEBHOOK_ENDPOINT_BACKOFF_SECONDS * 2 ** beyond, settings.WEBHOOK_BACKOFF_MAX_SECONDS)


def _failed(user_id: int, url: str, result: Result, now: datetime, *, backs_off: bool = True) -> None:
    with transaction.atomic():
        Endpoint.objects.bulk_create([Endpoint(user_id=user_id, url_hash=url_hash(url), url=url)],
                                     ignore_conflicts=True)
        state = _of(user_id, url).select_for_update().get()
        if backs_off:
            state.consecutive_failures += 1
            if state.consecutive_failures >= settings.WEBHOOK_ENDPOINT_FAILURE_THRESHOLD:
                state.open_until = now + timedelta(seconds=backoff_seconds(state.consecutive_failures))
        state.last_failure_at = now
        state.last_error = result.error or f"HTTP {result.code}"
        state.failing_since = state.failing_since or now
        if state.disabled_at is None and (now - state.failing_since).total_seconds() >= \
                settings.WEBHOOK_ENDPOINT_DISABLE_AFTER_SECONDS:
            state.disabled_at = now
            log.warning("webhook endpoint %s of user %s disabled: every attempt failed since %s (last: %s)",
                        state.pk, user_id, state.failing_since.isoformat(), state.last_error[:200])
        state.save()


def _answered(user_id: int, url: str, now: datetime, *, success: bool = True) -> int | None:
    # Only an endpoint with something to reset is written: a success on a healthy endpoint (the
    # common case) costs one indexed read.
    something = Q(consecutive_failures__gt=0) | Q(open_until__isnull=False)
    if success:
        something |= Q(failing_since__isnull=False)
    state = _of(user_id, url).filter(something).first()
    if state is None:
        return None
    changes = {"consecutive_failures": 0, "open_until": None, "updated_at": now}
    if success:
        changes.update(last_success_at=now, failing_since=None)
    Endpoint.objects.filter(pk=state.pk).update(**changes)
    return state.pk
