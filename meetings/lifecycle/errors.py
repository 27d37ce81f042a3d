"""Domain errors raised by meeting services. `common.errors` turns them into JSON responses
with the HTTP status each one carries, so services stay free of HTTP and views stay thin."""
from __future__ import annotations

from common.domain_errors import DomainError


class NotFound(DomainError):
    http_status = 404


class MeetingNotFound(NotFound):
    pass


class DuplicateMeeting(DomainError):
    http_status = 409


class MeetingConflict(DomainError):
    http_status = 409


class BotLimitReached(DomainError):
    http_status = 403


class ScheduledBotLimitReached(DomainError):
    # 409, not 429: waiting does not help by itself (a scheduled bot holds its place until it is
    # launched, days later maybe), the user's own meetings are in the way (as a duplicate's 409);
    # not 422: the request itself is valid, and succeeds once one is cancelled.
    http_status = 409


class MeetingDataTooLarge(ValueError):
    """A meeting's user-written data over MEETING_DATA_MAX_BYTES (the API answers 422)."""


class UnknownSession(NotFound):
    pass


class BackendUnavailable(DomainError):
    http_status = 503
