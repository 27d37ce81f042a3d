"""The admin API of protocol.md ("Admin API"), guarded by `X-Admin-API-Key`."""
from __future__ import annotations

import hashlib
import json
import threading

import pytest
from django.conf import settings
from django.db import connection, connections, transaction
from django.test import Client

from accounts.models import APIToken, User
from tests.factories import make_token, make_user
from tests.waiting import wait_for

pytestmark = [pytest.mark.django_db, pytest.mark.urls("tests.auth_urls")]

SECRET = "whsec-do-not-show-me"


@pytest.fixture
def api():
    """A client that sends the right admin key."""
    return Client(headers={"X-Admin-API-Key": settings.ADMIN_API_TOKEN})


def post_json(client, path, body):
    return client.post(path, data=json.dumps(body), content_type="application/json")


def patch_json(client, path, body):
    return client.patch(path, data=json.dumps(body), content_type="application/json")


def call(client, method, path):
    """Any method, with an empty JSON object as the body."""
    return client.generic(method.upper(), path, data="{}", content_type="application/json")


def whoami(token: str):
    return Client(headers={"X-API-Key": token}).get("/test/whoami")


# --- The admin key ---------------------------------------------------------------------------------
EVERY_ENDPOINT = [
    ("post", "/admin/users"),
    ("get", "/admin/users"),
    ("get", "/admin/users/1"),
    ("patch", "/admin/users/1"),
    ("get", "/admin/users/email/a@example.com"),
    ("post", "/admin/users/1/tokens"),
    ("delete", "/admin/tokens/1"),
]


@pytest.mark.parametrize("method,path", EVERY_ENDPOINT)
def test_every_endpoint_refuses_a_request_without_admin_key_with_403_json(method, path):
    before = User.objects.count(), APIToken.objects.count()

    response = call(Client(), method, path)

    assert response.status_code == 403
    assert response["Content-Type"] == "application/json"
    assert response.json() == {"detail": "Invalid or missing admin token (X-Admin-API-Key header)"}
    assert (User.objects.count(), APIToken.objects.count()) == before


@pytest.mark.parametrize("method,path", EVERY_ENDPOINT)
def test_every_endpoint_refuses_a_wrong_admin_key_with_403_json(method, path):
    client = Client(headers={"X-Admin-API-Key": settings.ADMIN_API_TOKEN + "x"})

    response = call(client, method, path)

    assert response.status_code == 403
    assert "X-Admin-API-Key" in response.json()["detail"]


def test_a_user_api_token_is_not_an_admin_key():
    token = make_token(make_user())

    response = Client(headers={"X-Admin-API-Key": token, "X-API-Key": token}).get("/admin/users")

    assert response.status_code == 403


def test_an_empty_admin_key_is_refused(settings):
    settings.ADMIN_API_TOKEN = ""

    response = Client(headers={"X-Admin-API-Key": ""}).get("/admin/users")

    assert response.status_code == 403


# --- POST /admin/users -----------------------------------------------------------------------------
def test_create_user_answers_201_with_the_user(api):
    response = post_json(api, "/admin/users", {"email": "alice@example.com", "name": "Alice",
                                               "image_url": "https://example.com/a.png",
                                               "max_concurrent_bots": 3})

    assert response.status_code == 201
    body = response.json()
    assert set(body) == {"id", "email", "name", "image_url", "max_concurrent_bots", "data", "created_at"}
    user = User.objects.get(pk=body["id"])
    assert (user.email, user.name, user.image_url, user.max_concurrent_bots) == (
        "alice@example.com", "Alice", "https://example.com/a.png", 3)
    assert body["email"] == "alice@example.com"
    assert body["max_concurrent_bots"] == 3
    assert body["data"] == {}
    assert body["created_at"].endswith("Z")


def test_create_user_without_a_limit_gets_the_default_limit(api, settings):
    settings.DEFAULT_MAX_CONCURRENT_BOTS = 4

    response = post_json(api, "/admin/users", {"email": "bob@example.com"})

    assert response.status_code == 201
    assert response.json()["max_concurrent_bots"] == 4
    assert User.objects.get(email="bob@example.com").max_concurrent_bots == 4


def test_create_user_with_an_existing_email_answers_200_with_the_existing_user_unchanged(api):
    existing = make_user(email="carol@example.com", name="Carol", max_concurrent_bots=2)

    response = post_json(api, "/admin/users", {"email": "carol@example.com", "name": "Other",
                                               "max_concurrent_bots": 9})

    assert response.status_code == 200
    assert response.json()["id"] == existing.id
    assert response.json()["name"] == "Carol"
    assert response.json()["max_concurrent_bots"] == 2
    assert User.objects.filter(email__iexact="carol@example.com").count() == 1


def test_create_user_matches_an_existing_email_whatever_its_case(api):
    existing = make_user(email="dave@example.com")

    response = post_json(api, "/admin/users", {"email": "DAVE@Example.COM"})

    assert response.status_code == 200
    assert response.json()["id"] == existing.id
    assert User.objects.filter(email__iexact="dave@example.com").count() == 1


@pytest.mark.parametrize("body,field", [
    ({"email": "not-an-email"}, "email"),
    ({}, "email"),
    ({"email": "e@example.com", "max_concurrent_bots": -1}, "max_concurrent_bots"),
    ({"email": "e@example.com", "max_concurrent_bots": "many"}, "max_concurrent_bots"),
    ({"email": "e@example.com", "max_concurrent_bots": 2**31}, "max_concurrent_bots"),
    ({"email": "e@example.com", "image_url": "not a url"}, "image_url"),
    ({"email": "e@example.com", "name": "x" * 256}, "name"),
    # Longer than the column (it was a database error, a 500), though a valid address.
    ({"email": "e" * 60 + "@" + ".".join(["d" * 60] * 4) + ".com"}, "email"),
    # The JSON type the schema names, not one DRF would coerce.
    ({"email": "e@example.com", "max_concurrent_bots": "3"}, "max_concurrent_bots"),
    ({"email": "e@example.com", "max_concurrent_bots": 3.0}, "max_concurrent_bots"),
    ({"email": "e@example.com", "max_concurrent_bots": True}, "max_concurrent_bots"),
    ({"email": "e@example.com", "name": 7}, "name"),
])
def test_create_user_with_an_invalid_field_answers_422_with_per_field_errors(api, body, field):
    response = post_json(api, "/admin/users", body)

    assert response.status_code == 422
    payload = response.json()
    assert field in payload["errors"]
    assert payload["detail"].startswith("Invalid request:")
    assert field in payload["detail"]
    assert not User.objects.filter(email="e@example.com").exists()


@pytest.mark.parametrize("raw", ['{"email": ', "not json at all", '{"email": "x@example.com",}'])
def test_create_user_with_malformed_json_answers_422_json(api, raw):
    response = api.post("/admin/users", data=raw, content_type="application/json")

    assert response.status_code == 422
    assert response["Content-Type"] == "application/json"
    assert response.json()["detail"].startswith("Malformed JSON body")


@pytest.mark.parametrize("raw", ["[]", '"alice@example.com"', "null", "42"])
def test_create_user_with_a_json_body_that_is_not_an_object_answers_422(api, raw):
    response = api.post("/admin/users", data=raw, content_type="application/json")

    assert response.status_code == 422
    assert "detail" in response.json()
    assert "errors" in response.json()


def test_create_user_with_a_non_json_content_type_answers_415_json(api):
    response = api.post("/admin/users", data="email=a@example.com",
                        content_type="application/x-www-form-urlencoded")

    assert response.status_code == 415
    assert "detail" in response.json()


# --- GET /admin/users ------------------------------------------------------------------------------
def test_list_users_answers_a_json_list_in_id_order(api):
    users = [make_user() for _ in range(3)]

    response = api.get("/admin/users")

    assert response.status_code == 200
    assert [u["id"] for u in response.json()] == [u.id for u in users]
    assert response.json()[0]["email"] == users[0].email


def test_list_users_pages_with_skip_and_limit(api):
    ids = [make_user().id for _ in range(5)]

    page = api.get("/admin/users", {"skip": 1, "limit": 2}).json()
    rest = api.get("/admin/users", {"skip": 3, "limit": 100}).json()
    beyond = api.get("/admin/users", {"skip": 5}).json()
    none = api.get("/admin/users", {"limit": 0}).json()

    assert [u["id"] for u in page] == ids[1:3]
    assert [u["id"] for u in rest] == ids[3:]
    assert beyond == []
    assert none == []


def test_list_users_accepts_the_largest_skip_the_database_can_hold(api):
    make_user()

    response = api.get("/admin/users", {"skip": 2**63 - 1})

    assert response.status_code == 200
    assert response.json() == []


def test_list_users_caps_limit_at_1000(api):
    User.objects.bulk_create([User(email=f"bulk{i}@example.com") for i in range(1001)])

    response = api.get("/admin/users", {"limit": 5000})

    assert response.status_code == 200
    assert len(response.json()) == 1000


@pytest.mark.parametrize("params,field", [
    ({"skip": "abc"}, "skip"),
    ({"skip": "-1"}, "skip"),
    ({"limit": "1.5"}, "limit"),
    ({"limit": "-5"}, "limit"),
    ({"limit": ""}, "limit"),
    ({"skip": str(10**20)}, "skip"),
])
def test_list_users_with_a_bad_skip_or_limit_answers_422(api, params, field):
    response = api.get("/admin/users", params)

    assert response.status_code == 422
    assert field in response.json()["errors"]


# --- GET /admin/users/{id}, /admin/users/email/{email} ---------------------------------------------
def test_get_user_by_id_answers_the_user(api):
    user = make_user(name="Erin")

    response = api.get(f"/admin/users/{user.id}")

    assert response.status_code == 200
    assert response.json()["id"] == user.id
    assert response.json()["email"] == user.email
    assert response.json()["name"] == "Erin"


@pytest.mark.parametrize("user_id", ["987654321", str(10**20)])
def test_get_unknown_user_answers_404_json(api, user_id):
    response = api.get(f"/admin/users/{user_id}")

    assert response.status_code == 404
    assert response["Content-Type"] == "application/json"
    assert response.json()["detail"]


@pytest.mark.parametrize("path", ["/admin/users/not-a-number", "/admin/users/", "/admin/tokens",
                                  "/admin/users/1/tokens/2", "/admin/users/email/a/b"])
@pytest.mark.parametrize("with_key", [True, False])
def test_an_unknown_path_under_the_admin_api_answers_404_json_not_the_django_admin_login(
        api, path, with_key):
    client = api if with_key else Client()

    response = client.post(path, data="{}", content_type="application/json")

    assert response.status_code == 404
    assert response["Content-Type"] == "application/json"
    assert response.json() == {"detail": f"Not found: {path}"}


def test_get_user_by_email_answers_the_user_whatever_the_case(api):
    user = make_user(email="frank+ops@example.com")

    exact = api.get("/admin/users/email/frank+ops@example.com")
    other_case = api.get("/admin/users/email/Frank+Ops@EXAMPLE.com")

    assert exact.status_code == 200
    assert exact.json()["id"] == user.id
    assert other_case.status_code == 200
    assert other_case.json()["id"] == user.id


def test_get_user_by_unknown_email_answers_404_json(api):
    make_user(email="someone@example.com")

    response = api.get("/admin/users/email/nobody@example.com")

    assert response.status_code == 404
    assert response.json()["detail"]


# --- PATCH /admin/users/{id} -----------------------------------------------------------------------
def test_patch_user_updates_the_given_fields_only(api):
    user = make_user(name="Old", image_url="https://example.com/old.png", max_concurrent_bots=1)

    response = patch_json(api, f"/admin/users/{user.id}", {"name": "New", "max_concurrent_bots": 5})

    assert response.status_code == 200
    assert response.json()["name"] == "New"
    assert response.json()["max_concurrent_bots"] == 5
    user.refresh_from_db()
    assert (user.name, user.max_concurrent_bots, user.image_url) == (
        "New", 5, "https://example.com/old.png")


def test_patch_user_merges_data_into_the_existing_data(api):
    user = make_user(data={"keep": 1, "change": "old"})

    response = patch_json(api, f"/admin/users/{user.id}", {"data": {"change": "new", "add": True}})

    assert response.status_code == 200
    assert response.json()["data"] == {"keep": 1, "change": "new", "add": True}
    user.refresh_from_db()
    assert user.data == {"keep": 1, "change": "new", "add": True}


def test_patch_user_cannot_change_the_email(api):
    user = make_user(email="grace@example.com")

    response = patch_json(api, f"/admin/users/{user.id}", {"email": "other@example.com"})

    assert response.status_code == 200
    user.refresh_from_db()
    assert user.email == "grace@example.com"


@pytest.mark.parametrize("body,field", [
    ({"max_concurrent_bots": -1}, "max_concurrent_bots"),
    ({"max_concurrent_bots": 2**31}, "max_concurrent_bots"),
    ({"data": "not an object"}, "data"),
    ({"image_url": "nope"}, "image_url"),
    ({"data": {"note": "nul \u0000 byte"}}, "data"),
])
def test_patch_user_with_an_invalid_field_answers_422_and_changes_nothing(api, body, field):
    user = make_user(max_concurrent_bots=2, data={"a": 1})

    response = patch_json(api, f"/admin/users/{user.id}", body)

    assert response.status_code == 422
    assert field in response.json()["errors"]
    user.refresh_from_db()
    assert (user.max_concurrent_bots, user.data) == (2, {"a": 1})


def test_patch_user_with_malformed_json_answers_422_json(api):
    user = make_user()

    response = api.patch(f"/admin/users/{user.id}", data="{name: x}", content_type="application/json")

    assert response.status_code == 422
    assert response.json()["detail"].startswith("Malformed JSON body")


def test_patch_unknown_user_answers_404_json(api):
    response = patch_json(api, "/admin/users/987654321", {"name": "x"})

    assert response.status_code == 404
    assert response.json()["detail"]


# --- The webhook secret ----------------------------------------------------------------------------
def test_the_webhook_secret_is_never_returned_by_the_admin_api(api):
    user = make_user(email="hidden@example.com",
                     data={"webhook_url": "https://hooks.example.com/x", "webhook_secret": SECRET})

    responses = [
        post_json(api, "/admin/users", {"email": "hidden@example.com"}),
        api.get("/admin/users"),
        api.get(f"/admin/users/{user.id}"),
        api.get("/admin/users/email/hidden@example.com"),
        patch_json(api, f"/admin/users/{user.id}", {"data": {"notes": "n"}}),
        post_json(api, f"/admin/users/{user.id}/tokens", {}),
        api.get(f"/admin/users/{user.id}/tokens"),
    ]

    for response in responses:
        assert response.status_code in (200, 201), response.content
        assert SECRET not in response.content.decode()
        assert "webhook_secret" not in response.content.decode()
    assert api.get(f"/admin/users/{user.id}").json()["data"] == {
        "webhook_url": "https://hooks.example.com/x", "notes": "n"}
    user.refresh_from_db()
    assert user.webhook_secret == SECRET  # hidden, not lost
    assert user.data == {"notes": "n"}


# --- The webhook URL in data (Vexa's shape), kept in its column -----------------------------------
HOOK = "https://hooks.example.com/botmanager"


def test_patch_data_webhook_url_sets_the_webhook_and_shows_it_in_data(api):
    user = make_user(data={"plan": "pro"})

    response = patch_json(api, f"/admin/users/{user.id}", {"data": {"webhook_url": HOOK, "notes": "n"}})

    assert response.status_code == 200
    assert response.json()["data"] == {"plan": "pro", "notes": "n", "webhook_url": HOOK}
    user.refresh_from_db()
    assert (user.webhook_url, user.data) == (HOOK, {"plan": "pro", "notes": "n"})
    # Its deliveries are signed: a secret is generated (PUT /user/webhook answers it), never shown here.
    assert len(user.webhook_secret) == 64
    assert user.webhook_secret not in response.content.decode()
    assert api.get(f"/admin/users/{user.id}").json()["data"] == {"plan": "pro", "notes": "n", "webhook_url": HOOK}


def test_patch_data_webhook_url_keeps_the_secret_and_an_empty_url_removes_the_webhook(api):
    user = make_user(data={"webhook_url": HOOK, "webhook_secret": SECRET})

    assert patch_json(api, f"/admin/users/{user.id}",
                      {"data": {"webhook_url": "https://other.example.com/x"}}).status_code == 200
    user.refresh_from_db()
    assert (user.webhook_url, user.webhook_secret) == ("https://other.example.com/x", SECRET)

    for removed in ("", None):
        response = patch_json(api, f"/admin/users/{user.id}", {"data": {"webhook_url": removed}})
        assert response.status_code == 200
        assert response.json()["data"] == {}
        user.refresh_from_db()
        assert (user.webhook_url, user.data) == ("", {})


@pytest.mark.parametrize("value", [123, 1.5, True, ["https://hooks.example.com/x"], {"url": HOOK},
                                   "ftp://hooks.example.com/x", "not a url", "https://" + "x" * 2048 + ".com"])
def test_patch_data_webhook_url_that_is_not_a_valid_url_string_answers_422_json(api, value):
    user = make_user(data={"webhook_url": HOOK, "keep": 1})

    response = patch_json(api, f"/admin/users/{user.id}", {"data": {"webhook_url": value}, "name": "changed"})

    assert response.status_code == 422
    assert response["Content-Type"] == "application/json"
    assert set(response.json()["errors"]) == {"data"}
    user.refresh_from_db()
    assert (user.webhook_url, user.data, user.name) == (HOOK, {"keep": 1}, "")


def test_patch_data_webhook_secret_is_refused(api):
    user = make_user()

    response = patch_json(api, f"/admin/users/{user.id}", {"data": {"webhook_secret": "mine"}})

    assert response.status_code == 422
    assert "PUT /user/webhook" in response.json()["errors"]["data"][0]
    user.refresh_from_db()
    assert (user.webhook_secret, user.data) == ("", {})


def test_create_user_with_data_webhook_url_sets_the_webhook(api):
    response = post_json(api, "/admin/users", {"email": "hooked@example.com",
                                               "data": {"webhook_url": HOOK, "plan": "pro"}})

    assert response.status_code == 201
    assert response.json()["data"] == {"plan": "pro", "webhook_url": HOOK}
    user = User.objects.get(email="hooked@example.com")
    assert (user.webhook_url, user.data, len(user.webhook_secret)) == (HOOK, {"plan": "pro"}, 64)
    assert user.webhook_secret not in response.content.decode()


@pytest.mark.parametrize("data", [{"webhook_url": 42}, {"webhook_url": "javascript:alert(1)"},
                                  {"webhook_secret": "x"}, "not an object"])
def test_create_user_with_invalid_webhook_data_answers_422_and_creates_nothing(api, data):
    response = post_json(api, "/admin/users", {"email": "nohook@example.com", "data": data})

    assert response.status_code == 422
    assert set(response.json()["errors"]) == {"data"}
    assert not User.objects.filter(email="nohook@example.com").exists()


# --- Tokens ----------------------------------------------------------------------------------------
def test_issue_token_answers_201_with_id_token_user_id_created_at(api):
    user = make_user()

    response = post_json(api, f"/admin/users/{user.id}/tokens", {})

    assert response.status_code == 201
    body = response.json()
    assert set(body) == {"id", "token", "user_id", "created_at"}
    assert body["user_id"] == user.id
    assert APIToken.objects.get(pk=body["id"]).user_id == user.id
    assert len(body["token"]) >= 32
    assert body["created_at"].endswith("Z")


def test_an_issued_token_authenticates_its_user_with_x_api_key(api):
    user = make_user()
    token = post_json(api, f"/admin/users/{user.id}/tokens", {}).json()["token"]

    response = whoami(token)

    assert response.status_code == 200
    assert response.json()["user_id"] == user.id


def test_each_issued_token_is_distinct(api):
    user = make_user()

    tokens = {post_json(api, f"/admin/users/{user.id}/tokens", {}).json()["token"] for _ in range(3)}

    assert len(tokens) == 3


def test_only_the_sha256_of_a_token_is_stored_and_no_column_holds_the_clear_token(api):
    user = make_user()
    body = post_json(api, f"/admin/users/{user.id}/tokens", {}).json()
    token = body["token"]

    record = APIToken.objects.get(pk=body["id"])
    assert record.token_hash == hashlib.sha256(token.encode()).hexdigest()
    with connection.cursor() as cursor:
        for table in connection.introspection.table_names(cursor):
            cursor.execute(f'SELECT t::text FROM "{table}" AS t')
            for (row,) in cursor.fetchall():
                assert token not in row, f"clear token found in table {table}: {row}"


def test_issue_token_for_unknown_user_answers_404_json(api):
    response = post_json(api, "/admin/users/987654321/tokens", {})

    assert response.status_code == 404
    assert response.json()["detail"]
    assert APIToken.objects.count() == 0


def test_list_tokens_shows_prefixes_and_never_the_token(api):
    user = make_user()
    token = post_json(api, f"/admin/users/{user.id}/tokens", {}).json()["token"]

    response = api.get(f"/admin/users/{user.id}/tokens")

    assert response.status_code == 200
    [listed] = response.json()
    assert listed["prefix"] == token[: len(listed["prefix"])]
    assert listed["revoked_at"] is None
    assert token not in response.content.decode()


def test_delete_token_revokes_it_and_the_token_then_gets_403_invalid_api_token(api):
    user = make_user()
    issued = post_json(api, f"/admin/users/{user.id}/tokens", {}).json()
    assert whoami(issued["token"]).status_code == 200

    response = api.delete(f"/admin/tokens/{issued['id']}")

    assert response.status_code == 200
    assert response.json()["revoked_at"] is not None
    assert APIToken.objects.get(pk=issued["id"]).revoked_at is not None
    refused = whoami(issued["token"])
    assert refused.status_code == 403
    assert refused.json() == {"detail": "Invalid API token"}


def test_revoking_one_token_leaves_the_users_other_tokens_working(api):
    user = make_user()
    first = post_json(api, f"/admin/users/{user.id}/tokens", {}).json()
    second = post_json(api, f"/admin/users/{user.id}/tokens", {}).json()

    api.delete(f"/admin/tokens/{first['id']}")

    assert whoami(first["token"]).status_code == 403
    assert whoami(second["token"]).status_code == 200


def test_revoking_a_revoked_token_again_keeps_the_first_revocation_time(api):
    user = make_user()
    issued = post_json(api, f"/admin/users/{user.id}/tokens", {}).json()
    first = api.delete(f"/admin/tokens/{issued['id']}").json()["revoked_at"]

    again = api.delete(f"/admin/tokens/{issued['id']}")

    assert again.status_code == 200
    assert again.json()["revoked_at"] == first


def test_delete_unknown_token_answers_404_json(api):
    response = api.delete("/admin/tokens/987654321")

    assert response.status_code == 404
    assert response["Content-Type"] == "application/json"
    assert "987654321" in response.json()["detail"]


# --- Methods ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("method,path", [
    ("put", "/admin/users"),
    ("delete", "/admin/users"),
    ("delete", "/admin/users/1"),
    ("put", "/admin/users/1"),
    ("get", "/admin/tokens/1"),
    ("post", "/admin/users/email/a@example.com"),
])
def test_an_unsupported_method_answers_405_json(api, method, path):
    response = call(api, method, path)

    assert response.status_code == 405
    assert response["Content-Type"] == "application/json"
    assert method.upper() in response.json()["detail"]


# --- Creation racing another creation of the same email --------------------------------------------
def _race_create_user(api, committed_email: str, posted_email: str):
    """Another connection inserts `committed_email` and holds its transaction open while the API
    creates `posted_email`; once the API is blocked on it (or done), the other side commits."""
    inserted, release = threading.Event(), threading.Event()
    result: dict = {}

    def concurrent_insert():
        try:
            with transaction.atomic():
                User.objects.create_user(email=committed_email)
                inserted.set()
                release.wait(10)
        finally:
            connections.close_all()

    def api_call():
        try:
            result["response"] = post_json(api, "/admin/users", {"email": posted_email})
        except Exception as exc:  # the test client re-raises what would have been a 500
            result["error"] = exc
        finally:
            connections.close_all()

    other = threading.Thread(target=concurrent_insert)
    other.start()
    assert inserted.wait(10)
    caller = threading.Thread(target=api_call)
    caller.start()

    def waiting_on_a_lock() -> bool:
        with connection.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM pg_stat_activity "
                           "WHERE datname = current_database() AND wait_event_type = 'Lock'")
            return bool(cursor.fetchone()[0])

    # The API call blocks on the concurrent insert's row (or has already answered).
    wait_for(lambda: not caller.is_alive() or waiting_on_a_lock(), timeout=10, interval=0.02,
             what="the API call to wait on the concurrent insert")
    release.set()
    other.join(10)
    caller.join(10)
    assert "error" not in result, f"the API raised (a 500): {result.get('error')!r}"
    return result["response"]


@pytest.mark.django_db(transaction=True)
def test_create_user_racing_a_concurrent_creation_of_the_same_email_answers_200_with_that_user(api):
    response = _race_create_user(api, "race@example.com", "race@example.com")

    assert response.status_code == 200
    assert response.json()["id"] == User.objects.get(email="race@example.com").id


@pytest.mark.django_db(transaction=True)
def test_two_users_never_share_an_email_that_differs_only_by_case(api):
    response = _race_create_user(api, "Racer@example.com", "racer@example.com")

    assert response.status_code == 200
    assert User.objects.filter(email__iexact="racer@example.com").count() == 1
