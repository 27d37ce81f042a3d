"""Domain errors raised by meeting services. `botmanager.errors` turns them into JSON responses
with the HTTP status each one carries, so services stay free of HTTP and views stay thin."""
from __future__ import annotations


class DomainError(Exception):
    http_status = 400

    def __init__(self, detail: str):
        super().__init__(detail)
        self.detail = detail


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


class UnknownSession(NotFound):
    pass


class BackendUnavailable(DomainError):
    http_status = 503
