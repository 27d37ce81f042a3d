"""Loaded by the schemathesis CLI (SCHEMATHESIS_HOOKS) in tests/api/test_fuzz.py: the project's own
check on every response, beside schemathesis' `all`."""
from __future__ import annotations

import re
import uuid
from datetime import datetime, timedelta, timezone

import schemathesis


@schemathesis.check
def error_is_json_with_detail(ctx, response, case):
    """Every error answer is JSON with a `detail` string (common/errors.py)."""
    if response.status_code < 400:
        return None
    try:
        body = response.json()
    except ValueError:
        raise AssertionError(f"{response.status_code} answer is not JSON: {response.text[:200]!r}") from None
    if not isinstance(body, dict) or not isinstance(body.get("detail"), str):
        raise AssertionError(f"{response.status_code} answer has no `detail` string: {response.text[:200]!r}")
    return None


# idempotency/http.py's KEY_PATTERN (the fuzzed server is another process: the hooks import none of it).
IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e](?:[\x20-\x7e]{0,253}[\x21-\x7e])?$")


@schemathesis.hook
def map_case(ctx, case):
    """A `join_at` the schema allows (any date-time) is valid only in the next 30 days, which a
    schema cannot say: a generated date-time is moved to tomorrow, other values (the negative
    cases) are sent as generated. tests/test_scheduled_bots.py covers join_at's own rules.

    A valid `Idempotency-Key` is made unique per case: generated keys repeat ("0", "00"), and a
    repeated key with another body is a 422 (or with the same one a replay) instead of the request
    the case means to send. Invalid keys (the negative cases) are sent as generated.
    tests/test_idempotency.py covers the key's own rules."""
    headers = case.headers or {}
    if isinstance(headers.get("Idempotency-Key"), str) and IDEMPOTENCY_KEY.fullmatch(headers["Idempotency-Key"]):
        headers["Idempotency-Key"] = f"fuzz-{uuid.uuid4()}"
    _valid_cursors(case)
    body = case.body
    if case.operation.path == "/bots" and case.method.upper() == "POST" and isinstance(body, dict) \
            and isinstance(body.get("join_at"), str):
        try:
            parsed = datetime.fromisoformat(body["join_at"].replace("Z", "+00:00"))
        except ValueError:
            return case
        if parsed.tzinfo is not None:
            body["join_at"] = (datetime.now(timezone.utc) + timedelta(days=1)).isoformat()
    return case


def _valid_cursors(case) -> None:
    """A cursor the schema allows (any string) is almost never a valid signed one, which a schema
    cannot say: a generated `after` of the deliveries listing is dropped, and a redelivery range
    starts from the first event (`after: ""`, no `until`); a value of another type (the negative
    cases) is sent as generated. tests/webhooks/test_user_deliveries.py covers the cursors."""
    if case.operation.path == "/user/webhook/deliveries" and isinstance(case.query, dict):
        case.query.pop("after", None)
    body = case.body
    if case.operation.path == "/user/webhook/redeliver" and isinstance(body, dict):
        if isinstance(body.get("after"), str):
            body["after"] = ""
        if isinstance(body.get("until"), str):
            del body["until"]
