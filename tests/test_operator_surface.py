"""The operator surface (docs/security.md): each weakness written as the attack, with the behaviour
that now holds (admin login lockout, password hashes in the admin, error text reaching tenants,
/readyz, /metrics, the webhook address guard)."""
from __future__ import annotations

import logging

import pytest
from django.test import Client

from meetings.lifecycle.statuses import MeetingStatus
from meetings.models import Meeting
from orchestrators.base import OrchestratorError
from tests.factories import make_meeting, make_user
from tests.http import answer

PASSWORD = "correct horse battery staple"
ADMIN = "root@example.com"
ATTACKER_IP, ADMIN_IP, PROXY_IP = "203.0.113.66", "198.51.100.7", "10.9.9.9"


@pytest.fixture
def console():
    """A client logged in as a superuser."""
    client = Client()
    client.force_login(make_user(email="ops@example.com", is_staff=True, is_superuser=True))
    return client


# --- 1. Admin login lockout: by account and address together --------------------------------------
def _login(email: str, password: str, **meta):
    client = Client()
    response = client.post("/admin/login/", {"username": email, "password": password, "next": "/admin/"}, **meta)
    return response, client


def _fail_until_locked(settings, email: str, **meta) -> None:
    for _ in range(settings.AXES_FAILURE_LIMIT):
        _login(email, "wrong", **meta)
    locked, _ = _login(email, PASSWORD, **meta)
    assert "Too many failed login attempts" in answer(locked, 429)["detail"]


def _logged_in(response, client) -> bool:
    return response.status_code == 302 and bool(client.session.get("_auth_user_id"))


@pytest.mark.django_db
def test_an_attackers_wrong_passwords_do_not_lock_the_admin_out_at_their_own_address(settings):
    make_user(email=ADMIN, password=PASSWORD, is_staff=True, is_superuser=True)
    _fail_until_locked(settings, ADMIN, REMOTE_ADDR=ATTACKER_IP)

    assert _logged_in(*_login(ADMIN, PASSWORD, REMOTE_ADDR=ADMIN_IP))


@pytest.mark.django_db
def test_a_locked_account_at_one_address_leaves_other_accounts_at_that_address_able_to_log_in(settings):
    make_user(email=ADMIN, password=PASSWORD, is_staff=True, is_superuser=True)
    make_user(email="colleague@example.com", password=PASSWORD, is_staff=True, is_superuser=True)
    _fail_until_locked(settings, ADMIN, REMOTE_ADDR=ATTACKER_IP)

    assert _logged_in(*_login("colleague@example.com", PASSWORD, REMOTE_ADDR=ATTACKER_IP))


@pytest.mark.django_db
def test_behind_the_trusted_proxy_the_client_is_the_address_the_proxy_appended(settings):
    """Everyone reaches the admin through the proxy: the lockout keys on the address the proxy
    saw (the right-most X-Forwarded-For entry), not on the proxy's own, nor on what the client
    wrote to the left of it."""
    settings.TRUSTED_PROXY_ADDRESSES = [PROXY_IP]
    make_user(email=ADMIN, password=PASSWORD, is_staff=True, is_superuser=True)
    # The attacker claims to be the admin's address; nginx appends the attacker's real one.
    _fail_until_locked(settings, ADMIN, REMOTE_ADDR=PROXY_IP, HTTP_X_FORWARDED_FOR=f"{ADMIN_IP}, {ATTACKER_IP}")

    assert _logged_in(*_login(ADMIN, PASSWORD, REMOTE_ADDR=PROXY_IP, HTTP_X_FORWARDED_FOR=ADMIN_IP))


@pytest.mark.django_db
def test_a_forged_x_forwarded_for_from_an_address_that_is_not_the_proxy_is_ignored(settings):
    """An attacker who talks to the web directly and writes a new X-Forwarded-For each time
    would never be locked if the header were believed."""
    settings.TRUSTED_PROXY_ADDRESSES = [PROXY_IP]
    make_user(email=ADMIN, password=PASSWORD, is_staff=True, is_superuser=True)
    for n in range(settings.AXES_FAILURE_LIMIT):
        _login(ADMIN, "wrong", REMOTE_ADDR=ATTACKER_IP, HTTP_X_FORWARDED_FOR=f"192.0.2.{n + 1}")

    locked, _ = _login(ADMIN, PASSWORD, REMOTE_ADDR=ATTACKER_IP, HTTP_X_FORWARDED_FOR="192.0.2.200")

    assert "Too many failed login attempts" in answer(locked, 429)["detail"]


def test_a_trusted_proxy_may_be_named_by_network(settings, rf):
    from common.clientaddr import client_address

    settings.TRUSTED_PROXY_ADDRESSES = ["10.9.0.0/16"]
    request = rf.get("/", REMOTE_ADDR=PROXY_IP, HTTP_X_FORWARDED_FOR=f"{ADMIN_IP}, {ATTACKER_IP}")

    assert client_address(request) == ATTACKER_IP


def test_a_trusted_proxy_may_be_named_by_host_name(settings, rf):
    """Compose names its `proxy` service: its address changes when the container is recreated."""
    from common.clientaddr import client_address

    settings.TRUSTED_PROXY_ADDRESSES = ["localhost"]
    request = rf.get("/", REMOTE_ADDR="127.0.0.1", HTTP_X_FORWARDED_FOR=ATTACKER_IP)

    assert client_address(request) == ATTACKER_IP


def test_a_trusted_proxy_seen_through_a_dual_stack_listener_is_still_trusted(settings, rf):
    from common.clientaddr import client_address

    settings.TRUSTED_PROXY_ADDRESSES = [PROXY_IP]
    request = rf.get("/", REMOTE_ADDR=f"::ffff:{PROXY_IP}", HTTP_X_FORWARDED_FOR=ATTACKER_IP)

    assert client_address(request) == ATTACKER_IP


def test_x_forwarded_for_is_ignored_when_no_proxy_is_trusted(settings, rf):
    from common.clientaddr import client_address

    settings.TRUSTED_PROXY_ADDRESSES = []
    request = rf.get("/", REMOTE_ADDR=ATTACKER_IP, HTTP_X_FORWARDED_FOR=ADMIN_IP)

    assert client_address(request) == ATTACKER_IP


# --- 2. No password hash in the Django admin ------------------------------------------------------
@pytest.mark.django_db
def test_the_user_change_page_never_shows_the_password_hash(console):
    user = make_user(email="hashed@example.com", password=PASSWORD, is_staff=True)
    algorithm, _, rest = user.password.partition("$")

    page = console.get(f"/admin/accounts/user/{user.pk}/change/")

    assert page.status_code == 200
    html = page.content.decode()
    assert "Set (not shown)" in html
    assert rest.split("$")[-1] not in html  # the hash itself
    assert f"{algorithm}$" not in html and "salt" not in html.lower()


@pytest.mark.django_db
def test_the_users_changelist_never_shows_the_password_hash(console):
    user = make_user(email="hashed@example.com", password=PASSWORD)

    page = console.get("/admin/accounts/user/")

    assert page.status_code == 200 and b"hashed@example.com" in page.content
    assert user.password.split("$")[-1].encode() not in page.content


@pytest.mark.django_db
def test_the_token_change_page_never_shows_the_tokens_hash(console):
    from accounts.models import APIToken
    from tests.factories import make_token

    user = make_user(email="tokens@example.com")
    token = make_token(user)
    record = APIToken.objects.get(user=user)

    page = console.get(f"/admin/accounts/apitoken/{record.pk}/change/")

    assert page.status_code == 200 and record.prefix.encode() in page.content
    assert record.token_hash.encode() not in page.content and token.encode() not in page.content


# --- 3. Tenants see a short cause; the full error goes to the log and the admin -------------------
ENGINE_PATH = "/opt/operator-only/vexa-bot-missing"


def _launch_with_a_missing_bot_command(settings, tmp_path, meeting: Meeting) -> None:
    from meetings.launching.launch import launch
    from orchestrators import registry

    settings.ORCHESTRATOR = "process"
    settings.RUN_DIR = tmp_path
    settings.PROCESS_BOT_COMMAND = f"{ENGINE_PATH} --config /etc/operator-only/bot.json"
    registry.get_orchestrator.cache_clear()
    try:
        assert launch(meeting.id) is None
    finally:
        registry.get_orchestrator.cache_clear()


@pytest.mark.django_db
def test_a_failed_launch_shows_the_tenant_a_short_cause_without_engine_paths(api_client, api_user, settings,
                                                                            tmp_path, caplog):
    meeting = make_meeting(api_user, status=MeetingStatus.REQUESTED)
    with caplog.at_level(logging.WARNING, logger="meetings.launching.launch"):
        _launch_with_a_missing_bot_command(settings, tmp_path, meeting)

    body = answer(api_client.get(f"/meetings/{meeting.id}"), 200)

    assert body["status"] == "failed"
    assert body["data"]["last_error"].startswith("Bot launch failed: the bot backend could not start the bot.")
    text = str(body)
    assert "operator-only" not in text and str(tmp_path) not in text and "Errno" not in text
    assert ENGINE_PATH in caplog.text  # the operator's log has it


@pytest.mark.django_db
def test_a_failed_launch_shows_the_full_engine_error_in_the_admin(api_user, console, settings, tmp_path):
    meeting = make_meeting(api_user, status=MeetingStatus.REQUESTED)
    _launch_with_a_missing_bot_command(settings, tmp_path, meeting)

    page = console.get(f"/admin/meetings/meeting/{meeting.id}/change/")

    assert page.status_code == 200
    assert ENGINE_PATH.encode() in page.content


@pytest.mark.django_db
def test_a_broker_outage_at_launch_shows_the_tenant_no_broker_address(
        api_client, monkeypatch, django_capture_on_commit_callbacks):
    from kombu.exceptions import OperationalError

    from meetings import tasks

    def broker_down(*args, **kwargs):
        raise OperationalError("Error 111 connecting to redis-internal.example:6379. Connection refused.")

    monkeypatch.setattr(tasks.launch_bot, "delay", broker_down)
    with django_capture_on_commit_callbacks(execute=True):
        created = answer(api_client.post("/bots", {"platform": "google_meet", "native_meeting_id": "abc-defg-hij"},
                                         format="json"), 201)

    body = answer(api_client.get(f"/meetings/{created['id']}"), 200)

    assert body["status"] == "failed"
    assert "task queue is unavailable" in body["data"]["last_error"]
    assert "redis-internal" not in str(body)
    failed = Meeting.objects.get(pk=created["id"]).transitions.last()
    assert "redis-internal.example:6379" in failed.metadata["error"]  # what the admin shows


class _EngineDown:
    name = "engine-down"

    @classmethod
    def from_settings(cls, settings):
        return cls()

    def list(self):
        raise OrchestratorError("Docker engine at unix:///run/operator-only/docker.sock is not reachable")


@pytest.mark.django_db
def test_bots_status_503_names_no_engine_address(api_client, settings, monkeypatch):
    from orchestrators import registry

    monkeypatch.setitem(registry.BACKENDS, "engine-down", f"{__name__}._EngineDown")
    settings.ORCHESTRATOR = "engine-down"
    registry.get_orchestrator.cache_clear()
    try:
        body = answer(api_client.get("/bots/status"), 503)
    finally:
        registry.get_orchestrator.cache_clear()

    assert "bot backend is unavailable" in body["detail"]
    assert "operator-only" not in body["detail"] and "docker.sock" not in body["detail"]


@pytest.mark.django_db
def test_a_reconfigure_during_a_redis_outage_answers_503_without_the_redis_address(api_client, api_user, settings):
    from common.redis_client import get_redis

    make_meeting(api_user, status=MeetingStatus.ACTIVE, native_meeting_id="abc-defg-hij")
    settings.REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens on port 1
    get_redis.cache_clear()
    try:
        response = api_client.put("/bots/google_meet/abc-defg-hij/config", {"language": "de"}, format="json")
    finally:
        get_redis.cache_clear()

    body = answer(response, 503)
    assert "nothing was changed" in body["detail"]
    assert "127.0.0.1" not in body["detail"] and "Error" not in body["detail"]


# --- 4. /readyz names what failed, not the exception ----------------------------------------------
@pytest.mark.django_db
def test_readyz_names_the_failed_check_without_the_exception_text(client, settings, caplog):
    from common.redis_client import get_redis

    settings.REDIS_URL = "redis://127.0.0.1:1/0"
    get_redis.cache_clear()
    try:
        with caplog.at_level(logging.WARNING, logger="observability.health"):
            response = client.get("/readyz")
    finally:
        get_redis.cache_clear()

    body = answer(response, 503)
    assert body["failed"] == ["redis"]
    assert body["checks"]["redis"]["error"] == "failed"
    assert "127.0.0.1:1" not in response.content.decode() and "Connection" not in response.content.decode()
    assert "127.0.0.1:1" in caplog.text  # the operator's log has the exception


# --- 5. /metrics needs its token unless it is served on loopback ----------------------------------
@pytest.mark.django_db
def test_metrics_without_a_token_refuses_a_client_that_is_not_on_loopback(client, settings):
    settings.METRICS_TOKEN = ""

    body = answer(client.get("/metrics", REMOTE_ADDR="203.0.113.9"), 403)

    assert "METRICS_TOKEN" in body["detail"]


@pytest.mark.django_db
def test_metrics_without_a_token_refuses_a_request_relayed_by_a_proxy_on_loopback(client, settings):
    """A proxy on the same host connects from loopback; the client behind it is anyone."""
    settings.METRICS_TOKEN = ""

    body = answer(client.get("/metrics", REMOTE_ADDR="127.0.0.1", HTTP_X_FORWARDED_FOR="203.0.113.9"), 403)

    assert "METRICS_TOKEN" in body["detail"]


@pytest.mark.django_db
def test_metrics_without_a_token_answers_a_direct_loopback_client(client, settings):
    settings.METRICS_TOKEN = ""

    response = client.get("/metrics", REMOTE_ADDR="127.0.0.1")

    assert response.status_code == 200 and b"botmanager_meetings" in response.content


@pytest.mark.django_db
def test_metrics_with_its_token_answers_any_address(client, settings):
    settings.METRICS_TOKEN = "scrape-me-" + "x" * 30

    response = client.get("/metrics", REMOTE_ADDR="203.0.113.9", HTTP_AUTHORIZATION=f"Bearer {settings.METRICS_TOKEN}")

    assert response.status_code == 200 and b"botmanager_meetings" in response.content


# --- 6. Webhooks to site-local IPv6 ---------------------------------------------------------------
@pytest.mark.parametrize("address", ["fec0::1", "feff:ffff::1", "fed0:1:2::3"])
def test_the_webhook_guard_refuses_site_local_ipv6(address):
    from accounts.webhook import is_private_address

    assert is_private_address(address)


@pytest.mark.django_db
def test_a_webhook_to_a_site_local_ipv6_address_is_refused(api_client):
    response = api_client.put("/user/webhook", {"webhook_url": "http://[fec0::1]/hook"}, format="json")

    assert "private or loopback" in answer(response, 422)["detail"]
