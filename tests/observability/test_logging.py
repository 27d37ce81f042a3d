"""Structured logs: every transition line carries meeting id, session uid, source and the
transition; no log line carries an API key, a webhook secret or a bot token."""
from __future__ import annotations

import json
import logging
import uuid

import pytest
from rest_framework.test import APIClient

from meetings.bot_protocol import tokens
from meetings.models import Meeting, MeetingSession
from observability.jsonlog import REDACTED, JsonFormatter, logging_config
from tests.factories import make_session, make_token, make_user

pytestmark = pytest.mark.django_db


def json_lines(caplog) -> list[dict]:
    formatter = JsonFormatter()
    lines = [formatter.format(record) for record in caplog.records]
    for line in lines:
        assert "\n" not in line
    return [json.loads(line) for line in lines]


def test_a_whole_bot_flow_logs_every_transition_with_structured_fields_and_no_secret(caplog, settings):
    caplog.set_level(logging.DEBUG)
    user = make_user()
    api_key = make_token(user)
    client = APIClient()
    client.credentials(HTTP_X_API_KEY=api_key)
    settings.WEBHOOK_ALLOW_PRIVATE_ADDRESSES = True
    hook = client.put("/user/webhook", {"webhook_url": "http://127.0.0.1:9/hook"}, format="json")
    assert hook.status_code == 200, hook.content
    webhook_secret = hook.json()["webhook_secret"]
    created = client.post("/bots", {"platform": "google_meet", "native_meeting_id": "abc-defg-hij"}, format="json")
    assert created.status_code == 201, created.content
    meeting = Meeting.objects.get(pk=created.json()["id"])
    first = make_session(meeting)
    bot = APIClient()
    for name in ("joining", "awaiting_admission", "started"):
        assert bot.post(f"/bots/internal/callback/{name}", {"connection_id": str(first.session_uid)},
                        format="json").status_code == 200
    # A restarted bot registers a new session with its meeting token.
    meeting_token = tokens.issue(meeting)
    second_uid = str(uuid.uuid4())
    assert bot.post("/bots/internal/callback/started", {"connection_id": second_uid}, format="json",
                    headers={"Authorization": f"Bearer {meeting_token}"}).status_code == 200
    # The old session is stale now: its callback is refused (and logged as such).
    assert bot.post("/bots/internal/callback/exited", {"connection_id": str(first.session_uid), "exit_code": 0},
                    format="json").status_code == 200
    assert client.delete("/bots/google_meet/abc-defg-hij").status_code == 202
    assert bot.post("/bots/internal/callback/exited", {"connection_id": second_uid, "exit_code": 0},
                    format="json").status_code == 200

    entries = json_lines(caplog)
    transitions = [e for e in entries if e.get("meeting_id") == meeting.id and "to_status" in e]
    moves = [(e["from_status"], e["to_status"], e["source"], e["applied"]) for e in transitions]
    assert moves == [
        ("requested", "joining", "bot_callback", True),
        ("joining", "awaiting_admission", "bot_callback", True),
        ("awaiting_admission", "active", "bot_callback", True),
        ("active", "completed", "bot_callback", False),  # the stale session's exit
        ("active", "stopping", "user", True),
        ("stopping", "completed", "bot_callback", True),
    ]
    # The session row's id, never its uid: the uid is the bot's capability (it ends its meeting).
    second = MeetingSession.objects.get(session_uid=second_uid)
    sessions = [e["session_id"] for e in transitions]
    assert sessions == [first.id] * 4 + [None, second.id]
    assert not any(str(first.session_uid) in line or second_uid in line
                   for line in caplog.text.splitlines()), "a session uid was logged"
    for entry in transitions:
        assert {"ts", "level", "logger", "message"} <= set(entry)
        assert entry["logger"] == "meetings.lifecycle.transitions" and entry["level"] == "INFO"
    assert "stale session" in transitions[3]["refusal"]

    everything = "\n".join(JsonFormatter().format(r) for r in caplog.records)
    assert len(caplog.records) >= len(transitions)
    for secret in (api_key, webhook_secret, meeting_token, settings.ADMIN_API_TOKEN, settings.SECRET_KEY):
        assert secret not in everything


def test_credential_fields_and_values_are_redacted_even_when_someone_logs_them():
    record = logging.LogRecord("x", logging.INFO, __file__, 1,
                               "calling with X-API-Key: bm_live_abc123 and Authorization: Bearer eyJhbGciOi.abc", (),
                               None)
    record.meeting_id = 7
    record.webhook_secret = "whsec_123"
    record.config = {"token": "eyJhbGciOiJIUzI1NiJ9.eyJtZWV0aW5nX2lkIjoxfQ.sig", "meeting_id": 7,
                     "nested": [{"api_key": "k"}], "redisUrl": "redis://r:6379/0"}

    entry = json.loads(JsonFormatter().format(record))

    assert entry["meeting_id"] == 7
    assert entry["webhook_secret"] == REDACTED
    assert entry["config"]["token"] == REDACTED and entry["config"]["nested"] == [{"api_key": REDACTED}]
    assert entry["config"]["redisUrl"] == "redis://r:6379/0"
    assert "bm_live_abc123" not in entry["message"] and "eyJhbGciOi.abc" not in entry["message"]
    assert entry["message"].startswith("calling with X-API-Key: " + REDACTED)


def test_exceptions_are_one_json_line():
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    line = JsonFormatter().format(record)
    assert "\n" not in line
    assert "ValueError: boom" in json.loads(line)["exception"]


def test_log_format_setting_selects_the_formatter():
    assert logging_config("json", "INFO")["handlers"]["console"]["formatter"] == "json"
    assert logging_config("plain", "DEBUG")["handlers"]["console"]["formatter"] == "plain"
    with pytest.raises(ValueError):
        logging_config("xml", "INFO")
