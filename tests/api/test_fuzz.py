"""The API against its own schema: schemathesis with every check it has, plus ours (an
error is JSON with a `detail`: tests/api/schemathesis_hooks.py), against a live gunicorn, once with
a user's API key (the user API, the bot callbacks, health) and once with the admin token (the admin
API). Deterministic (`--generation-deterministic`: the same cases on every run, no example
database) and bounded (MAX_EXAMPLES per operation).

A failure prints schemathesis' report: the check, the request (a curl line) and the response."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from django.conf import settings

from tests.factories import make_token, make_user
from tests.observability.test_gunicorn import Gunicorn
from tests.support import UNREACHED_RATE_LIMITS, lose_queued_tasks

pytestmark = pytest.mark.django_db(transaction=True)

SERVER_ERROR = re.compile(r'HTTP/[0-9.]+" 5[0-9][0-9] ')  # the status in an access log line
HOOKS = Path(__file__).with_name("schemathesis_hooks.py")
MAX_EXAMPLES = 25


@pytest.fixture
def server(tmp_path):
    # No Celery worker: the launches POST /bots enqueues wait in the test broker, dropped after.
    # One key fires hundreds of requests a second: the per-user rate limits are raised out of its
    # reach (their 429 is in the schema; tests/test_rate_limits.py makes them refuse).
    web = Gunicorn(tmp_path, workers=1, LOG_LEVEL="WARNING", **UNREACHED_RATE_LIMITS)
    yield web
    web.stop()
    lose_queued_tasks()


def schemathesis(server: Gunicorn, tmp_path: Path, header: str, *filters: str) -> subprocess.CompletedProcess:
    command = [
        str(Path(sys.executable).with_name("st")), "run", f"{server.url}/openapi.json",
        "--checks", "all", "--max-examples", str(MAX_EXAMPLES),
        "--generation-deterministic", "--workers", "1",
        "--request-timeout", "20", "--no-color", "--output-truncate", "false", "-H", header, *filters,
    ]
    result = subprocess.run(command, cwd=tmp_path, env={**os.environ, "SCHEMATHESIS_HOOKS": str(HOOKS)},
                            capture_output=True, text=True, timeout=600)
    print(result.stdout[-2500:])  # the figures (operations, test cases, phases), shown with -rP
    return result


def server_errors(server: Gunicorn) -> list[str]:
    """5xx answers in gunicorn's access log, and anything the web printed that is not a JSON log line
    (a traceback)."""
    lines = server.log.read_text().splitlines()
    access = [json.loads(line) for line in lines if line.startswith("{")]
    return ([entry["message"] for entry in access
             if entry.get("logger") == "gunicorn.access" and SERVER_ERROR.search(entry["message"])]
            + [line for line in lines if line.strip() and not line.startswith("{")][:20])


def test_the_user_api_the_callbacks_and_health_conform_to_the_schema(server, tmp_path):
    key = make_token(make_user(max_concurrent_bots=0))

    # Not fuzzed here: the event log's `after` is an opaque signed cursor (a string the schema allows
    # is almost never a valid one; tests/test_events_api.py covers it) and the stream never ends
    # (tests/test_event_stream.py).
    # POST /bots' body (per-platform id patterns in a oneOf, and join_at's date-time) makes
    # hypothesis discard many drafts: its efficiency health check is waived, every check still runs
    # on every case generated.
    result = schemathesis(server, tmp_path, f"X-API-Key: {key}", "--exclude-path-regex", "^/admin/|^/events",
                          "--suppress-health-check", "filter_too_much")

    assert result.returncode == 0, result.stdout[-20000:] + result.stderr[-3000:]
    assert not server_errors(server)


def test_the_admin_api_conforms_to_the_schema(server, tmp_path):
    # No NUL characters in generated strings: a user's `data` may hold none, in its keys too (PostgreSQL's
    # jsonb cannot store them; test_admin_api.py checks the 422), and OpenAPI 3.0 cannot say so of keys.
    result = schemathesis(server, tmp_path, f"X-Admin-API-Key: {settings.ADMIN_API_TOKEN}",
                          "--include-path-regex", "^/admin/", "--generation-allow-x00", "false")

    assert result.returncode == 0, result.stdout[-20000:] + result.stderr[-3000:]
    assert not server_errors(server)
