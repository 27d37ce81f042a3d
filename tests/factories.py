"""Small builders for test data. Tests put a meeting in a given status with a direct ORM update:
that is test setup, not product code (product code changes status only through lifecycle)."""
from __future__ import annotations

import itertools

from accounts.models import User
from accounts.services import issue_token
from meetings.lifecycle import transitions as lifecycle
from meetings.lifecycle.statuses import MeetingStatus, TransitionSource
from meetings.models import Meeting, MeetingSession

_seq = itertools.count(1)


def meet_id(n: int) -> str:
    """A valid, distinct Google Meet id (`abc-defg-hij` shape) for each n."""
    letters = ""
    for _ in range(10):
        n, digit = divmod(n, 26)
        letters += chr(ord("a") + digit)
    return f"{letters[:3]}-{letters[3:7]}-{letters[7:]}"


def make_user(**fields) -> User:
    n = next(_seq)
    fields.setdefault("email", f"user{n}-{id(fields)}@example.com")
    fields.setdefault("max_concurrent_bots", 0)
    return User.objects.create_user(**fields)


def make_token(user: User) -> str:
    return issue_token(user).token


def make_meeting(user: User | None = None, status: str = MeetingStatus.REQUESTED, **fields) -> Meeting:
    user = user or make_user()
    n = next(_seq)
    meeting = lifecycle.create_meeting(
        user=user,
        platform=fields.pop("platform", "google_meet"),
        native_meeting_id=fields.pop("native_meeting_id", meet_id(n)),
        data=fields.pop("data", {}),
        source=TransitionSource.USER,
    )
    if fields:
        Meeting.objects.filter(pk=meeting.pk).update(**fields)
    if status != MeetingStatus.REQUESTED:
        Meeting.objects.filter(pk=meeting.pk).update(status=status)
    meeting.refresh_from_db()
    return meeting


def make_session(meeting: Meeting, current: bool = True) -> MeetingSession:
    session = MeetingSession.objects.create(meeting=meeting)
    if current:
        Meeting.objects.filter(pk=meeting.pk).update(current_session=session)
    return session
