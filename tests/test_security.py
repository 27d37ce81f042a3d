"""Security hardening (docs/security.md): each weakness with the behaviour that now holds (the
slow-client test is tests/observability/test_slow_clients.py, the embedded servers' tests are in
tests/test_devstack.py, the compose file's in tests/observability/test_compose.py)."""
from __future__ import annotations

import json
import logging
import os
import stat
import subprocess
import sys
import time
import types
import uuid
from pathlib import Path

import jwt
import pytest
from rest_framework.test import APIClient

from botmanager import checks
from devstack import secrets as local_secrets
from meetings.lifecycle.statuses import MeetingStatus
from meetings.models import MeetingSession, MeetingTransition
from tests.factories import make_meeting, make_session, make_user
from tests.http import answer

REPO = Path(__file__).resolve().parents[1]
OLD_PUBLIC_SECRET_KEY = "dev-insecure-secret-key-change-me-in-production-0123456789"
GOOD = {"SECRET_KEY": "k" * 10 + "abcdefghijklmnopqrstuvwxyz0123456789",
        "BOT_TOKEN_SECRET": "b" * 10 + "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789",
        "ADMIN_API_TOKEN": "a" * 10 + "zyxwvutsrqponmlkjihgfedcba9876543210"}


def _callback(name: str, body, token: str | None = None, **extra):
    client = APIClient()
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return client.post(f"/bots/internal/callback/{name}", body, format="json", headers=headers, **extra)


# --- 1. No known secret signs or authenticates ----------------------------------------------------
@pytest.mark.django_db
def test_a_meeting_token_signed_with_the_old_public_secret_key_registers_no_session():
    meeting = make_meeting(make_user(), status=MeetingStatus.ACTIVE)
    make_session(meeting)
    forged = jwt.encode({"meeting_id": meeting.id, "user_id": meeting.user_id, "exp": int(time.time()) + 600},
                        OLD_PUBLIC_SECRET_KEY, algorithm="HS256")

    answer(_callback("exited", {"connection_id": str(uuid.uuid4()), "exit_code": 1,
                                "error_details": "taken over"}, forged), 404)

    meeting.refresh_from_db()
    assert meeting.status == MeetingStatus.ACTIVE
    assert MeetingSession.objects.filter(meeting=meeting).count() == 1


@pytest.mark.parametrize("name,value,problem", [
    ("SECRET_KEY", "", "not set"),
    ("SECRET_KEY", OLD_PUBLIC_SECRET_KEY, "publicly known"),
    ("SECRET_KEY", "change-me-compose-secret-key-0123456789abcdef0123456789", "publicly known"),
    ("SECRET_KEY", "django-insecure-0123456789abcdefghijklmnopqrstuvwxyz", "publicly known"),
    ("ADMIN_API_TOKEN", "dev-admin-token", "publicly known"),
    ("ADMIN_API_TOKEN", "short-but-random-7Hq", "too short"),
    ("BOT_TOKEN_SECRET", "a" * 64, "too short or too repetitive"),
    ("BOT_TOKEN_SECRET", GOOD["SECRET_KEY"], "must differ"),
])
def test_the_secret_check_refuses_missing_known_short_and_shared_secrets(name, value, problem):
    problems = checks.secret_problems(types.SimpleNamespace(**{**GOOD, name: value}))

    assert any(problem in p for p in problems), problems


def test_the_secret_check_passes_long_random_distinct_secrets():
    assert checks.secret_problems(types.SimpleNamespace(**GOOD)) == []


def test_manage_py_check_fails_with_the_old_public_secret_key():
    result = subprocess.run([sys.executable, "manage.py", "check"], cwd=REPO, capture_output=True, text=True,
                            timeout=120, env={**os.environ, "SECRET_KEY": OLD_PUBLIC_SECRET_KEY})

    assert result.returncode != 0
    assert "botmanager.E001" in result.stderr and "SECRET_KEY is a publicly known value" in result.stderr


def test_gunicorn_refuses_to_start_with_a_public_admin_token(tmp_path):
    result = subprocess.run(
        [str(Path(sys.executable).with_name("gunicorn")), "-c", "python:botmanager.gunicorn_conf", "botmanager.wsgi",
         "--bind", "127.0.0.1:0"], cwd=REPO, capture_output=True, text=True, timeout=60,
        env={**os.environ, "ADMIN_API_TOKEN": "dev-admin-token"})

    assert result.returncode != 0
    assert "gunicorn refuses to start" in result.stderr and "ADMIN_API_TOKEN is a publicly known" in result.stderr


def test_a_celery_worker_refuses_to_start_without_a_bot_token_secret():
    result = subprocess.run(
        [str(Path(sys.executable).with_name("celery")), "-A", "botmanager", "worker", "--pool", "solo",
         "-Q", "nothing-here"], cwd=REPO, capture_output=True, text=True, timeout=60,
        env={**os.environ, "BOT_TOKEN_SECRET": "too-short"})

    assert result.returncode != 0
    assert "Celery refuses to start" in result.stderr and "BOT_TOKEN_SECRET" in result.stderr


def test_generated_local_secrets_are_private_stable_and_distinct(tmp_path):
    first = local_secrets.load(tmp_path, create=True)
    again = local_secrets.load(tmp_path, create=True)

    assert first == again
    assert stat.S_IMODE(local_secrets.path(tmp_path).stat().st_mode) == 0o600
    assert set(first) == set(local_secrets.GENERATED)
    assert len(set(first.values())) == len(first)
    assert checks.secret_problems(types.SimpleNamespace(**first)) == []


@pytest.mark.django_db
def test_unknown_session_bad_token_and_token_of_a_missing_meeting_answer_alike(settings):
    meeting = make_meeting(make_user(), status=MeetingStatus.ACTIVE)
    missing = jwt.encode({"meeting_id": meeting.id + 10_000, "exp": int(time.time()) + 600},
                         settings.BOT_TOKEN_SECRET, algorithm="HS256")
    body = {"connection_id": str(uuid.uuid4())}

    answers = [_callback("joining", body), _callback("joining", body, "not-a-token"),
               _callback("joining", body, missing), _callback("joining", {"connection_id": "not-a-uuid"})]

    assert {(r.status_code, r.content) for r in answers} == {(answers[0].status_code, answers[0].content)}
    assert answers[0].status_code == 404
    assert str(meeting.id + 10_000).encode() not in answers[0].content


# --- 2. Bad input: bounded JSON, never a 500 ------------------------------------------------------
@pytest.mark.django_db
@pytest.mark.parametrize("depth", [480, 5000])
def test_a_deeply_nested_callback_body_answers_422_json(depth):
    meeting = make_meeting(make_user(), status=MeetingStatus.ACTIVE)
    uid = str(make_session(meeting).session_uid)

    raw = '{"connection_id": "%s", "exit_code": 1, "error_details": %s"x"%s}' % (uid, "[" * depth, "]" * depth)

    body = answer(APIClient().post("/bots/internal/callback/exited", raw, content_type="application/json"), 422)

    assert "nested too deeply" in body["detail"]
    meeting.refresh_from_db()
    assert meeting.status == MeetingStatus.ACTIVE


@pytest.mark.django_db
def test_a_deeply_nested_body_on_a_user_endpoint_answers_422_json(api_client):
    raw = '{"platform": "google_meet", "native_meeting_id": "abc-defg-hij", "bot_name": %s"x"%s}' % ("[" * 600, "]" * 600)

    response = api_client.post("/bots", raw, content_type="application/json")

    assert "nested too deeply" in answer(response, 422)["detail"]


@pytest.mark.django_db
def test_a_callback_body_over_the_size_limit_answers_413_json(settings):
    settings.JSON_MAX_BODY_BYTES = settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 10_000
    meeting = make_meeting(make_user(), status=MeetingStatus.ACTIVE)
    uid = str(make_session(meeting).session_uid)

    body = answer(_callback("exited", {"connection_id": uid, "exit_code": 1, "error_details": "x" * 20_000}), 413)

    assert "at most 10000 bytes" in body["detail"]


@pytest.mark.django_db
def test_a_user_body_over_the_size_limit_answers_413_json(api_client, settings):
    settings.JSON_MAX_BODY_BYTES = 10_000

    response = api_client.post("/bots", json.dumps({"platform": "google_meet", "native_meeting_id": "abc-defg-hij",
                                                    "bot_name": "x" * 20_000}), content_type="application/json")

    assert "at most 10000 bytes" in answer(response, 413)["detail"]


@pytest.mark.django_db
def test_a_refused_callback_stores_a_capped_error_details():
    meeting = make_meeting(make_user(), status=MeetingStatus.COMPLETED)
    uid = str(make_session(meeting).session_uid)
    huge = {"trace": ["line " + "y" * 1000 for _ in range(500)]}  # 500 KB

    answer(_callback("exited", {"connection_id": uid, "exit_code": 1, "error_details": huge}), 200)

    [record] = MeetingTransition.objects.filter(meeting=meeting, applied=False)
    assert len(json.dumps(record.metadata)) < 5_000
    assert "truncated" in record.metadata["error_details"]


@pytest.mark.django_db
def test_a_failed_meetings_last_error_is_capped():
    meeting = make_meeting(make_user(), status=MeetingStatus.ACTIVE)
    uid = str(make_session(meeting).session_uid)

    answer(_callback("exited", {"connection_id": uid, "exit_code": 1, "error_details": "z" * 50_000}), 200)

    meeting.refresh_from_db()
    assert meeting.status == MeetingStatus.FAILED
    assert 4_000 <= len(meeting.data["last_error"]) < 4_100


@pytest.mark.django_db
@pytest.mark.parametrize("platform,native_id", [
    ("teams", "１２３４５６７８９０"), ("teams", "١٢٣٤٥٦٧٨٩٠"), ("zoom", "１２３４５６７８９"),
])
def test_meeting_ids_take_ascii_digits_only(api_client, platform, native_id):
    response = api_client.post("/bots", {"platform": platform, "native_meeting_id": native_id}, format="json")

    assert "native_meeting_id" in answer(response, 422)["errors"]


# --- Every endpoint answers JSON, for every method ------------------------------------------------
ROUTES = ["/healthz", "/readyz", "/metrics", "/bots", "/bots/status", "/bots/internal/callback/joining",
          "/bots/internal/callback/nope", "/bots/google_meet/abc-defg-hij", "/bots/google_meet/abc-defg-hij/config",
          "/meetings", "/meetings/1", "/meetings/google_meet/abc-defg-hij", "/user/webhook", "/admin/users",
          "/admin/users/1", "/admin/users/email/a@example.com", "/admin/users/1/tokens", "/admin/tokens/1",
          "/admin/users/1/nothing", "/no-such-path"]


@pytest.mark.django_db
@pytest.mark.parametrize("method", ["get", "post", "put", "patch", "delete", "options"])
@pytest.mark.parametrize("path", ROUTES)
def test_every_endpoint_answers_json_for_every_method(path, method):
    client = APIClient(enforce_csrf_checks=True)  # as a real client: Django's CSRF check is on

    if method == "get":
        response = client.get(path)
    else:
        response = getattr(client, method)(path, data="{}", content_type="application/json")

    assert response.status_code < 500, (path, method, response.status_code)
    if response.status_code not in (200, 204) or path != "/metrics":
        assert response["Content-Type"].startswith("application/json"), (path, method, response.content[:200])
        if response.status_code >= 400:
            assert json.loads(response.content)["detail"]


@pytest.mark.django_db
@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics"])
def test_a_post_to_a_probe_answers_405_json(path):
    response = APIClient(enforce_csrf_checks=True).post(path)

    assert "not allowed" in answer(response, 405)["detail"]


# --- 5. The session uid never leaves the server ---------------------------------------------------
@pytest.mark.django_db
def test_bots_status_does_not_show_the_session_uid(api_client, api_user, settings, tmp_path):
    from tests.test_bots_api import process_bot

    meeting = make_meeting(api_user, status=MeetingStatus.ACTIVE)
    session = make_session(meeting)
    with process_bot(settings, tmp_path, meeting, session, f"bot-{meeting.id}"):
        response = api_client.get("/bots/status")

    [bot] = answer(response, 200)["running_bots"]
    assert "botmanager.session_uid" not in bot["labels"]
    assert str(session.session_uid) not in response.content.decode()


def test_process_backend_state_is_readable_by_its_owner_only(tmp_path):
    from orchestrators.base import BotSpec
    from orchestrators.process import ProcessOrchestrator

    backend = ProcessOrchestrator(tmp_path, "sec-test", [sys.executable, "-c", "import time; time.sleep(30)"])
    container_id = backend.start(BotSpec(name="bot", config={"connectionId": str(uuid.uuid4())},
                                         labels={"botmanager.session_uid": str(uuid.uuid4())}))
    try:
        bots_dir = tmp_path / "bots"
        assert stat.S_IMODE(bots_dir.stat().st_mode) == 0o700
        files = list(bots_dir.iterdir())
        assert {f.suffix for f in files} >= {".json", ".log"}
        for file in files:
            assert stat.S_IMODE(file.stat().st_mode) == 0o600, file
    finally:
        backend.stop(container_id, timeout=1)


def test_simbot_logs_neither_its_connection_id_nor_its_token(capsys):
    from simbot import __main__ as simbot_main, config

    uid = str(uuid.uuid4())
    raw = {"meeting_id": 1, "connectionId": uid, "token": "eyJsecret", "redisUrl": "redis://:pw@127.0.0.1:1/0",
           "botManagerCallbackUrl": "http://127.0.0.1:1/bots/internal/callback/exited"}
    logger = logging.getLogger("simbot-test")
    handler = logging.StreamHandler(sys.stdout)
    handler.addFilter(simbot_main._MaskUuids())
    logger.addHandler(handler)
    try:
        logger.warning("starting; BOT_CONFIG %s", json.dumps(config.redacted(raw)))
        logger.warning("listening on bot_commands:%s", uid)
    finally:
        logger.removeHandler(handler)

    out = capsys.readouterr().out
    assert uid not in out and uid.replace("-", "") not in out
    assert "eyJsecret" not in out and ":pw@" not in out


def test_json_logs_mask_session_uids_passed_as_fields():
    from observability.jsonlog import REDACTED, redact

    assert redact({"session_uid": "u", "connection_id": "c", "connectionId": "d", "meeting_id": 3}) == {
        "session_uid": REDACTED, "connection_id": REDACTED, "connectionId": REDACTED, "meeting_id": 3}


# --- 6. Webhooks: no internal destinations by default ---------------------------------------------
@pytest.mark.parametrize("address", [
    "127.0.0.1", "10.0.0.1", "172.16.0.1", "192.168.1.1", "169.254.169.254", "100.64.0.1", "100.127.255.254",
    "224.0.0.1", "239.255.255.250", "0.0.0.0", "255.255.255.255", "192.0.2.1", "::1", "fe80::1", "fc00::1",
    "ff02::1", "::ffff:127.0.0.1", "::ffff:10.0.0.1", "64:ff9b::7f00:1", "64:ff9b::a9fe:a9fe", "64:ff9b:1::a00:1",
    "2002:7f00:1::1", "2001::1",
])
def test_webhook_guard_refuses_internal_addresses(address):
    from accounts.webhook import is_private_address

    assert is_private_address(address)


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "2001:4860:4860::8888", "64:ff9b::808:808",
                                     "::ffff:8.8.8.8"])
def test_webhook_guard_lets_public_addresses_through(address):
    from accounts.webhook import is_private_address

    assert not is_private_address(address)


def test_private_webhook_addresses_are_refused_by_default():
    result = subprocess.run([sys.executable, "-c", "from django.conf import settings; "
                             "print(settings.WEBHOOK_ALLOW_PRIVATE_ADDRESSES)"], cwd=REPO, capture_output=True,
                            text=True, timeout=60,
                            env={k: v for k, v in os.environ.items() if k != "WEBHOOK_ALLOW_PRIVATE_ADDRESSES"})

    assert result.stdout.strip() == "False", result.stderr


@pytest.mark.django_db
def test_a_webhook_to_the_metadata_address_is_refused(api_client):
    response = api_client.put("/user/webhook", {"webhook_url": "http://169.254.169.254/latest/meta-data/"},
                              format="json")

    assert "private or loopback" in answer(response, 422)["detail"]


# --- 8. Host names, admin login throttling --------------------------------------------------------
@pytest.mark.django_db
def test_a_request_for_another_host_name_answers_400_json():
    response = APIClient().get("/healthz", HTTP_HOST="rebind.attacker.example")

    assert "ALLOWED_HOSTS" in answer(response, 400)["detail"]


def test_allowed_hosts_default_to_loopback_names():
    result = subprocess.run([sys.executable, "-c", "from django.conf import settings; print(settings.ALLOWED_HOSTS)"],
                            cwd=REPO, capture_output=True, text=True, timeout=60,
                            env={k: v for k, v in os.environ.items() if k != "ALLOWED_HOSTS"})

    assert result.stdout.strip() == "['127.0.0.1', 'localhost', '[::1]']", result.stderr


@pytest.mark.django_db
def test_the_django_admin_login_is_locked_after_repeated_failures(client, settings):
    from accounts.models import User

    User.objects.create_superuser("ops-locked@example.com", "right-password-123")
    for _ in range(settings.AXES_FAILURE_LIMIT):
        client.post("/admin/login/", {"username": "ops-locked@example.com", "password": "wrong"})

    response = client.post("/admin/login/", {"username": "ops-locked@example.com", "password": "right-password-123"})

    assert "Too many failed login attempts" in answer(response, 429)["detail"]
    assert "_auth_user_id" not in client.session


@pytest.mark.django_db
def test_a_correct_admin_login_still_works_below_the_limit(client):
    from accounts.models import User

    User.objects.create_superuser("ops-ok@example.com", "right-password-123")
    client.post("/admin/login/", {"username": "ops-ok@example.com", "password": "wrong"})

    response = client.post("/admin/login/", {"username": "ops-ok@example.com", "password": "right-password-123"})

    assert response.status_code == 302
    assert client.session["_auth_user_id"]


def test_a_bots_container_name_carries_nothing_of_its_session_uid():
    import uuid

    from orchestrators.base import bot_name

    uid = uuid.uuid4()
    name = bot_name(42, str(uid))
    assert name.startswith("botmanager-bot-42-") and name == bot_name(42, str(uid))  # stable per session
    assert uid.hex[:8] not in name and str(uid)[:8] not in name
