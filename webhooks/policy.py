"""What an attempt's result means, and when the next attempt is due.

- 2xx: delivered.
- a network error (refused, reset, DNS, TLS, timeout), 408, 429 and 5xx: retried.
- anything else fails at once: other 4xx, and 3xx (redirects are never followed: a webhook URL
  that redirects is misconfigured, and following it would send the signed body elsewhere).

Retries back off exponentially with jitter: after attempt n the next is due in a delay drawn from
[d/2, d] with d = min(WEBHOOK_BACKOFF_MAX_SECONDS, WEBHOOK_BACKOFF_BASE_SECONDS * 2**(n-1)); a
429/503 `Retry-After` (seconds) lengthens it, up to the maximum. No attempt starts after the
delivery's retry window (WEBHOOK_RETRY_WINDOW_SECONDS from the event): it is then failed.
"""
from __future__ import annotations

import enum
import random


class Verdict(str, enum.Enum):
    SUCCEEDED = "succeeded"
    RETRY = "retry"
    FAILED = "failed"


RETRYABLE_CODES = frozenset({408, 429})


def classify(code: int | None, *, permanent_error: bool = False) -> Verdict:
    """`code` is None when no HTTP response came back (a network error, retried unless it is
    `permanent_error`: nothing would change on a retry)."""
    if code is None:
        return Verdict.FAILED if permanent_error else Verdict.RETRY
    if 200 <= code < 300:
        return Verdict.SUCCEEDED
    if code in RETRYABLE_CODES or code >= 500:
        return Verdict.RETRY
    return Verdict.FAILED


def backoff_delay(attempt: int, *, base: float, cap: float, retry_after: float | None = None,
                  rng: random.Random | None = None) -> float:
    """Seconds to wait after the `attempt`-th attempt (1-based) of the current window."""
    rng = rng or random
    nominal = min(cap, base * 2 ** min(max(attempt - 1, 0), 60))
    delay = nominal / 2 + rng.uniform(0, nominal / 2)
    if retry_after is not None and retry_after > delay:
        delay = min(retry_after, cap)
    return delay


def parse_retry_after(value: str | None) -> float | None:
    """The seconds form of Retry-After (the HTTP-date form is ignored)."""
    if not value:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    return seconds if seconds >= 0 else None
