"""The callback view's fast path (meetings/api/callback_body.py) against CallbackSerializer: for
every body, the fast path either declines (None: the DRF view answers, errors included) or yields
exactly the report the serializer would have produced."""
from __future__ import annotations

import json

import pytest
from django.test import RequestFactory
from rest_framework.exceptions import ValidationError

from meetings.api import callback_body
from meetings.api.serializers import CallbackSerializer
from meetings.api.util import validated
from meetings.bot_protocol.callbacks import CALLBACK_NAMES, CallbackReport

UID = "0b5a3c1e-6f1e-4d8e-9d7c-2a9f3b1c4d5e"
BODIES = [
    {"connection_id": UID},
    {"connection_id": f"  {UID} "},
    {"connection_id": UID, "unknown": 1},
    {"connection_id": UID, "exit_code": 0},
    {"connection_id": UID, "exit_code": 1, "failure_stage": "joining", "reason": "  it failed  "},
    {"connection_id": UID, "exit_code": 2**31 - 1}, {"connection_id": UID, "exit_code": 2**31},
    {"connection_id": UID, "exit_code": -(2**31)}, {"connection_id": UID, "exit_code": -(2**31) - 1},
    {"connection_id": UID, "exit_code": "3"}, {"connection_id": UID, "exit_code": 3.0},
    {"connection_id": UID, "exit_code": True}, {"connection_id": UID, "exit_code": None},
    {"connection_id": UID, "status": "active"}, {"connection_id": UID, "status": "stopping"},
    {"connection_id": UID, "status": "completed", "completion_reason": "stopped"},
    {"connection_id": UID, "status": "failed", "failure_stage": "nope"},
    {"connection_id": UID, "status": ""}, {"connection_id": UID, "status": None},
    {"connection_id": UID, "completion_reason": ""}, {"connection_id": UID, "completion_reason": 1},
    # Unhashable values where a choice is expected (schemathesis found them answering 500).
    {"connection_id": UID, "failure_stage": {}}, {"connection_id": UID, "completion_reason": ["stopped"]},
    {"connection_id": UID, "container_id": ""}, {"connection_id": UID, "container_id": "   "},
    {"connection_id": UID, "container_id": "c" * 255}, {"connection_id": UID, "container_id": "c" * 256},
    {"connection_id": UID, "reason": "bad\u0000byte", "error_details": {"msg\u0000": ["a\u0000b"]}},
    {"connection_id": UID, "platform_specific_error": [1, "x", None]},
    {"connection_id": UID, "timestamp": "2026-11-22T00:00:00Z"}, {"connection_id": UID, "timestamp": ""},
    {"connection_id": UID, "reason": "\ud800"}, {"connection_id": UID, "reason": 5},
    {"connection_id": "a\u0000b"}, {"connection_id\u0000": UID}, {"connection_id": ""},
    {"connection_id": None}, {"connection_id": "z" * 65}, {"connection_id": 12345}, {},
    # The Vexa bot's (services/vexa-bot/core/src/services/unified-callback.ts, UnifiedCallbackPayload).
    {"connection_id": UID, "status": "needs_human_help", "reason": "consent prompt"},
    {"connection_id": UID, "status": "completed", "exit_code": 0, "completion_reason": "max_bot_time_exceeded"},
    {"connection_id": UID, "status": "failed", "exit_code": 1, "failure_stage": "active",
     "bot_logs": ['{"msg":"a\u0000"}', "b"], "bot_resources": {"samples": 3, "peak_memory_bytes": None},
     "speaker_events": [{"event_type": "SPEAKER_START", "participant_name": "x\u0000"}]},
    {"connection_id": UID, "status": "x" * 65}, {"connection_id": UID, "completion_reason": " stopped "},
    {"connection_id": UID, "completion_reason": ["stopped"]}, {"connection_id": UID, "failure_stage": {"a": 1}},
]


def _serializer_report(name: str, body) -> CallbackReport | None:
    try:
        return CallbackReport(name=name, **validated(CallbackSerializer, body, name=name))
    except ValidationError:
        return None


@pytest.mark.parametrize("name", CALLBACK_NAMES)
@pytest.mark.parametrize("body", BODIES, ids=range(len(BODIES)))
def test_the_fast_path_declines_or_agrees_with_the_serializer(name, body):
    request = RequestFactory().post("/bots/internal/callback/x", json.dumps(body), content_type="application/json")
    fast = callback_body.report(name, request)
    if fast is not None:
        assert fast == _serializer_report(name, body)


@pytest.mark.parametrize("raw,content_type", [
    ("", "application/json"), ("{", "application/json"), ("[1]", "application/json"),
    ('{"connection_id": NaN}', "application/json"), (json.dumps({"connection_id": UID}), "text/plain"),
    (json.dumps({"connection_id": UID}), "application/json; charset=latin-1"),
])
def test_other_bodies_take_the_drf_path(raw, content_type):
    request = RequestFactory().post("/bots/internal/callback/x", raw, content_type=content_type)
    assert callback_body.report("joining", request) is None


def test_a_plain_body_takes_the_fast_path():
    request = RequestFactory().post("/bots/internal/callback/x", json.dumps({"connection_id": UID}),
                                    content_type="application/json; charset=UTF-8")
    assert callback_body.report("joining", request) == CallbackReport(name="joining", connection_id=UID)


def test_a_vexa_bots_terminal_report_with_its_forensic_fields_takes_the_fast_path():
    body = {"connection_id": UID, "container_id": "vexa-bot-1", "status": "completed", "reason": "left_alone_timeout",
            "exit_code": 0, "completion_reason": "left_alone", "timestamp": "2026-11-22T00:00:00.000Z",
            "bot_logs": ['{"msg":"leaving"}'], "bot_resources": {"samples": 12, "cgroup_available": True}}
    request = RequestFactory().post("/bots/internal/callback/x", json.dumps(body), content_type="application/json")

    report = callback_body.report("status_change", request)

    assert report is not None and report == _serializer_report("status_change", body)
    assert report.bot_logs == ['{"msg":"leaving"}']
