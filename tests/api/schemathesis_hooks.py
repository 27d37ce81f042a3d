"""Loaded by the schemathesis CLI (SCHEMATHESIS_HOOKS) in tests/api/test_fuzz.py: the project's own
check on every response, beside schemathesis' `all`."""
from __future__ import annotations

import schemathesis


@schemathesis.check
def error_is_json_with_detail(ctx, response, case):
    """Every error answer is JSON with a `detail` string (botmanager/errors.py)."""
    if response.status_code < 400:
        return None
    try:
        body = response.json()
    except ValueError:
        raise AssertionError(f"{response.status_code} answer is not JSON: {response.text[:200]!r}") from None
    if not isinstance(body, dict) or not isinstance(body.get("detail"), str):
        raise AssertionError(f"{response.status_code} answer has no `detail` string: {response.text[:200]!r}")
    return None
