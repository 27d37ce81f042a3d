"""`PUT /user/webhook`: the user's webhook URL and its signing secret (protocol.md "Webhooks").
Real PostgreSQL; every response is JSON, never a 500."""
from __future__ import annotations

import re

import pytest
from rest_framework.test import APIClient

from accounts.models import User
from tests.http import answer

pytestmark = pytest.mark.django_db

URL = "https://hooks.example.com/botmanager"


def put_webhook(client, **body):
    return client.put("/user/webhook", body, format="json")


def stored(user) -> User:
    return User.objects.get(pk=user.pk)


def test_put_webhook_answers_the_url_and_a_secret_and_stores_both(api_client, api_user):
    body = answer(put_webhook(api_client, webhook_url=URL), 200)

    assert body["webhook_url"] == URL
    assert re.fullmatch(r"[0-9a-f]{64}", body["webhook_secret"])
    assert body["id"] == api_user.id
    assert body["data"] == {"webhook_url": URL}  # the user's data, without the secret
    user = stored(api_user)
    assert (user.webhook_url, user.webhook_secret, user.data) == (URL, body["webhook_secret"], {})


def test_the_secret_stays_the_same_when_the_url_changes(api_client, api_user):
    first = answer(put_webhook(api_client, webhook_url=URL), 200)

    second = answer(put_webhook(api_client, webhook_url="https://other.example.com/hook"), 200)

    assert second["webhook_url"] == "https://other.example.com/hook"
    assert second["webhook_secret"] == first["webhook_secret"]
    assert stored(api_user).webhook_url == "https://other.example.com/hook"


def test_rotate_secret_issues_a_new_secret(api_client, api_user):
    first = answer(put_webhook(api_client, webhook_url=URL), 200)

    rotated = answer(put_webhook(api_client, webhook_url=URL, rotate_secret=True), 200)

    assert rotated["webhook_secret"] != first["webhook_secret"]
    assert re.fullmatch(r"[0-9a-f]{64}", rotated["webhook_secret"])
    assert stored(api_user).webhook_secret == rotated["webhook_secret"]
    again = answer(put_webhook(api_client, webhook_url=URL, rotate_secret=False), 200)
    assert again["webhook_secret"] == rotated["webhook_secret"]


def test_each_user_gets_their_own_secret(api_client):
    from tests.factories import make_token, make_user

    other = APIClient()
    other.credentials(HTTP_X_API_KEY=make_token(make_user()))

    mine = answer(put_webhook(api_client, webhook_url=URL), 200)
    theirs = answer(put_webhook(other, webhook_url=URL), 200)

    assert mine["webhook_secret"] != theirs["webhook_secret"]


def test_put_webhook_keeps_the_users_other_data(api_client, api_user):
    api_user.data = {"plan": "pro"}
    api_user.save()

    body = answer(put_webhook(api_client, webhook_url=URL), 200)

    assert body["data"] == {"plan": "pro", "webhook_url": URL}
    assert stored(api_user).data == {"plan": "pro"}  # the webhook has its own columns


@pytest.mark.parametrize("url", [
    "https://user:pass@hooks.example.com/x",
    "https://token@hooks.example.com/x",
    "ftp://hooks.example.com/x",
    "javascript:alert(1)",
    "file:///etc/passwd",
    "not a url",
    "hooks.example.com/x",
    "/relative/path",
    "https://",
    "http://[::1",
    "https://hooks.example.com:99999/x",
    "",
    "https://hooks.example.com/" + "x" * 2048,
    "https://hooks.example.com/\u0000",
])
def test_an_invalid_webhook_url_answers_422_and_keeps_the_previous_one(api_client, api_user, url):
    answer(put_webhook(api_client, webhook_url=URL), 200)

    body = answer(put_webhook(api_client, webhook_url=url), 422)

    assert set(body["errors"]) == {"webhook_url"}
    assert "webhook_secret" not in body
    assert stored(api_user).webhook_url == URL


@pytest.mark.parametrize("url", ["http://127.0.0.1:9000/hook", "http://localhost/hook", "http://10.1.2.3/hook"])
def test_a_private_address_is_refused_when_the_setting_forbids_it(api_client, settings, url):
    settings.WEBHOOK_ALLOW_PRIVATE_ADDRESSES = False

    body = answer(put_webhook(api_client, webhook_url=url), 422)

    assert "private" in body["errors"]["webhook_url"][0]


@pytest.mark.parametrize("host", [
    f"{'a' * 64}.example.com",  # a DNS label longer than 63: idna encoding fails
    "a*", "hooks_1.example.com", "-hooks.example.com", "hooks..example.com",  # (schemathesis: "https://A*")
])
@pytest.mark.parametrize("private_allowed", [False, True])
def test_a_host_that_is_not_a_valid_host_name_answers_422(api_client, settings, host, private_allowed):
    settings.WEBHOOK_ALLOW_PRIVATE_ADDRESSES = private_allowed

    body = answer(put_webhook(api_client, webhook_url=f"https://{host}/hook"), 422)

    assert "not a valid host name" in body["errors"]["webhook_url"][0]


@pytest.mark.parametrize("host", ["hooks.example.com", "HOOKS.Example.com.", "bücher.example", "203.0.113.9",
                                  "[2001:db8::1]"])
def test_a_dns_name_or_an_address_is_a_valid_host(api_client, settings, host):
    settings.WEBHOOK_ALLOW_PRIVATE_ADDRESSES = True

    answer(put_webhook(api_client, webhook_url=f"https://{host}/hook"), 200)


def test_a_private_address_is_accepted_when_the_setting_allows_it(api_client, settings):
    settings.WEBHOOK_ALLOW_PRIVATE_ADDRESSES = True

    answer(put_webhook(api_client, webhook_url="http://127.0.0.1:9000/hook"), 200)


@pytest.mark.parametrize("body,field", [
    ({}, "webhook_url"),
    ({"webhook_url": None}, "webhook_url"),
    ({"webhook_url": URL, "rotate_secret": "perhaps"}, "rotate_secret"),
])
def test_an_invalid_body_answers_422(api_client, api_user, body, field):
    response = answer(api_client.put("/user/webhook", body, format="json"), 422)

    assert set(response["errors"]) == {field}
    assert stored(api_user).webhook_url == ""


@pytest.mark.parametrize("raw", ["[]", '"https://hooks.example.com"', "null", '{"webhook_url": '])
def test_a_body_that_is_not_a_json_object_answers_422(api_client, api_user, raw):
    answer(api_client.put("/user/webhook", raw, content_type="application/json"), 422)

    assert stored(api_user).webhook_url == ""


@pytest.mark.parametrize("method", ["post", "delete"])
def test_other_methods_answer_405_json_and_never_show_the_secret(api_client, method):
    secret = answer(put_webhook(api_client, webhook_url=URL), 200)["webhook_secret"]

    response = getattr(api_client, method)("/user/webhook")

    answer(response, 405)
    assert secret not in response.content.decode()


def test_the_admin_api_never_returns_the_secret_set_here(api_client, api_user, settings):
    secret = answer(put_webhook(api_client, webhook_url=URL), 200)["webhook_secret"]
    admin = APIClient()
    admin.credentials(HTTP_X_ADMIN_API_KEY=settings.ADMIN_API_TOKEN)

    responses = [admin.get(f"/admin/users/{api_user.id}"), admin.get("/admin/users"),
                 admin.get(f"/admin/users/email/{api_user.email}")]

    for response in responses:
        answer(response, 200)
        assert secret not in response.content.decode()
        assert "webhook_secret" not in response.content.decode()
    assert answer(admin.get(f"/admin/users/{api_user.id}"), 200)["data"] == {"webhook_url": URL}


def test_the_user_api_shows_the_secret_nowhere_else(api_client, api_user):
    from tests.factories import make_meeting

    secret = answer(put_webhook(api_client, webhook_url=URL), 200)["webhook_secret"]
    meeting = make_meeting(api_user)

    for path in ("/meetings", f"/meetings/{meeting.id}"):
        response = api_client.get(path)
        answer(response, 200)
        assert secret not in response.content.decode()


# --- Where the webhook is stored ----------------------------------------------------------------
@pytest.mark.django_db(transaction=True)
def test_the_migration_moves_the_webhook_from_data_to_columns_and_back():
    """accounts 0003/0004: the webhook_url and webhook_secret keys of User.data become columns
    (other data is kept); reversed, they go back into data."""
    from tests.support import latest_migrations
    from tests.support import migrate_to as migrate

    old = [("accounts", "0002_user_email_case_insensitive_unique")]
    latest = latest_migrations("accounts")
    try:
        OldUser = migrate(old).get_model("accounts", "User")
        rows = {
            "both": {"webhook_url": URL, "webhook_secret": "s" * 64, "plan": "pro"},
            "url-only": {"webhook_url": URL},
            "none": {"plan": "free"},
            "odd": {"webhook_url": 42, "webhook_secret": None, "keep": [1]},
        }
        for name, data in rows.items():
            OldUser.objects.create(email=f"{name}@migrate.example.com", password="", data=data)

        migrate(latest)

        users = {u.email.split("@")[0]: u for u in User.objects.filter(email__endswith="@migrate.example.com")}
        assert (users["both"].webhook_url, users["both"].webhook_secret, users["both"].data) == (
            URL, "s" * 64, {"plan": "pro"})
        assert (users["url-only"].webhook_url, users["url-only"].webhook_secret, users["url-only"].data) == (
            URL, "", {})
        assert (users["none"].webhook_url, users["none"].data) == ("", {"plan": "free"})
        assert (users["odd"].webhook_url, users["odd"].webhook_secret, users["odd"].data) == ("", "", {"keep": [1]})

        OldUser = migrate(old).get_model("accounts", "User")
        back = {u.email.split("@")[0]: u.data for u in OldUser.objects.filter(email__endswith="@migrate.example.com")}
        assert back["both"] == {"webhook_url": URL, "webhook_secret": "s" * 64, "plan": "pro"}
        assert back["url-only"] == {"webhook_url": URL}
        assert back["none"] == {"plan": "free"}
    finally:
        migrate(latest)


def test_a_user_created_with_the_old_data_keys_gets_the_columns():
    user = User.objects.create_user("legacy@example.com", data={"webhook_url": URL, "webhook_secret": "x" * 64,
                                                                "plan": "pro"})

    user = stored(user)
    assert (user.webhook_url, user.webhook_secret, user.data) == (URL, "x" * 64, {"plan": "pro"})
