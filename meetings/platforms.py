"""Per-platform rules: native meeting id formats, passcodes, and the meeting URL."""
from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import quote

from meetings.lifecycle.statuses import Platform


@dataclass(frozen=True)
class PlatformRule:
    id_pattern: re.Pattern
    id_hint: str
    passcode_pattern: re.Pattern | None  # None: passcodes are refused
    url_template: str
    passcode_param: str = ""


RULES = {
    Platform.GOOGLE_MEET: PlatformRule(
        re.compile(r"^[a-z]{3}-[a-z]{4}-[a-z]{3}$"), "like abc-defg-hij", None,
        "https://meet.google.com/{id}"),
    Platform.TEAMS: PlatformRule(
        re.compile(r"^[0-9]{10,15}$"), "10 to 15 digits", re.compile(r"^[A-Za-z0-9]{8,20}$"),
        "https://teams.live.com/meet/{id}", "p"),
    Platform.ZOOM: PlatformRule(
        re.compile(r"^[0-9]{9,11}$"), "9 to 11 digits", re.compile(r"^[A-Za-z0-9.\-_]{1,32}$"),
        "https://zoom.us/j/{id}", "pwd"),
}


def meeting_url(platform: str, native_meeting_id: str, passcode: str | None) -> str:
    rule = RULES[Platform(platform)]
    url = rule.url_template.format(id=native_meeting_id)
    if passcode and rule.passcode_param:
        url += f"?{rule.passcode_param}={quote(passcode, safe='')}"
    return url
