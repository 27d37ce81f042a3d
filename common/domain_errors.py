"""The base of every error a service raises for its caller to see: a message a person can act
on and the HTTP status it maps to. No web framework here: services raise these, and
`common.errors` (the API's exception handler) turns them into JSON responses."""
from __future__ import annotations


class DomainError(Exception):
    http_status = 400
    # Seconds, sent as Retry-After (every 429 carries one, as the rate limiter's do).
    retry_after: int | None = None

    def __init__(self, detail: str, retry_after: int | None = None):
        super().__init__(detail)
        self.detail = detail
        if retry_after is not None:
            self.retry_after = retry_after
