"""The meeting token handed to each bot: an HS256 JWT bound to one meeting.

A bot that restarts with a new connection id proves it belongs to the meeting with this token.
"""
from __future__ import annotations

import time

import jwt
from django.conf import settings

from meetings.models import Meeting

ALGORITHM = "HS256"


def issue(meeting: Meeting) -> str:
    claims = {
        "meeting_id": meeting.id,
        "user_id": meeting.user_id,
        "platform": meeting.platform,
        "native_meeting_id": meeting.native_meeting_id,
        "exp": int(time.time() + settings.BOT_TOKEN_TTL_SECONDS),
    }
    return jwt.encode(claims, settings.BOT_TOKEN_SECRET, algorithm=ALGORITHM)


def verify(token: str) -> dict | None:
    """The claims of a valid, unexpired token; None otherwise."""
    try:
        claims = jwt.decode(token, settings.BOT_TOKEN_SECRET, algorithms=[ALGORITHM],
                            options={"require": ["exp", "meeting_id"]})
    except jwt.PyJWTError:
        return None
    return claims if isinstance(claims.get("meeting_id"), int) else None
