"""`X-API-Key` authentication of the user API (protocol.md "Authentication").

Tested two ways, independent of the real user endpoints: the authentication class on its own, and
over HTTP through `/test/whoami` (tests/auth_urls.py), a view with the project's default
authentication and permission classes.
"""
from __future__ import annotations

import pytest
from django.test import Client
from django.utils import timezone
from rest_framework import exceptions
from rest_framework.request import Request
from rest_framework.test import APIRequestFactory

from accounts.authentication import APIKeyAuthentication
from accounts.models import APIToken, hash_token
from tests.factories import make_token, make_user

pytestmark = [pytest.mark.django_db, pytest.mark.urls("tests.auth_urls")]

MISSING = {"detail": "Missing API token (X-API-Key header)"}
INVALID = {"detail": "Invalid API token"}


def whoami(**headers):
    return Client(headers=headers).get("/test/whoami")


def authenticate(**headers):
    request = Request(APIRequestFactory().get("/anything", headers=headers))
    return APIKeyAuthentication().authenticate(request)


def revoke(token: str) -> None:
    assert APIToken.objects.filter(token_hash=hash_token(token)).update(revoked_at=timezone.now()) == 1


# --- Over HTTP -------------------------------------------------------------------------------------
def test_a_request_without_x_api_key_answers_403_missing_api_token():
    response = whoami()

    assert response.status_code == 403
    assert response["Content-Type"] == "application/json"
    assert response.json() == MISSING


def test_an_empty_x_api_key_counts_as_missing():
    response = whoami(**{"X-API-Key": ""})

    assert response.status_code == 403
    assert response.json() == MISSING


def test_an_unknown_token_answers_403_invalid_api_token():
    make_token(make_user())

    response = whoami(**{"X-API-Key": "bm_not-a-real-token"})

    assert response.status_code == 403
    assert response.json() == INVALID


def test_a_revoked_token_answers_403_invalid_api_token():
    token = make_token(make_user())
    revoke(token)

    response = whoami(**{"X-API-Key": token})

    assert response.status_code == 403
    assert response.json() == INVALID


def test_the_token_of_an_inactive_user_answers_403_invalid_api_token():
    user = make_user()
    token = make_token(user)
    user.is_active = False
    user.save()

    response = whoami(**{"X-API-Key": token})

    assert response.status_code == 403
    assert response.json() == INVALID


def test_a_valid_token_passes_as_its_user():
    user = make_user()
    make_user()  # another user with another token must not be picked
    token = make_token(user)

    response = whoami(**{"X-API-Key": token})

    assert response.status_code == 200
    assert response.json() == {"user_id": user.id, "email": user.email}


def test_each_token_authenticates_its_own_user():
    alice, bob = make_user(), make_user()
    alice_token, bob_token = make_token(alice), make_token(bob)

    assert whoami(**{"X-API-Key": alice_token}).json()["user_id"] == alice.id
    assert whoami(**{"X-API-Key": bob_token}).json()["user_id"] == bob.id


def test_a_token_is_matched_exactly_not_by_prefix_or_case():
    token = make_token(make_user())

    for near_miss in (token[:-1], token + "x", token.upper(), f" {token}x"):
        response = whoami(**{"X-API-Key": near_miss})
        assert response.status_code == 403, near_miss
        assert response.json() == INVALID


def test_an_authentication_failure_answers_403_not_401_and_asks_for_no_challenge():
    response = whoami(**{"X-API-Key": "bm_wrong"})

    assert response.status_code == 403
    assert "WWW-Authenticate" not in response.headers


def test_the_admin_key_does_not_authenticate_a_user_request(settings):
    response = whoami(**{"X-Admin-API-Key": settings.ADMIN_API_TOKEN})

    assert response.status_code == 403
    assert response.json() == MISSING


def test_a_view_that_finds_no_credentials_answers_403_json_with_detail():
    response = Client().get("/test/not-authenticated")

    assert response.status_code == 403
    assert response["Content-Type"] == "application/json"
    assert response.json() == {"detail": "Authentication credentials were not provided."}


# --- Errors outside any view answer JSON too ------------------------------------------------------
def test_an_unknown_url_answers_404_json():
    response = Client().get("/no/such/page")

    assert response.status_code == 404
    assert response["Content-Type"] == "application/json"
    assert response.json() == {"detail": "Not found: /no/such/page"}


def test_an_unexpected_error_answers_500_json_without_leaking_the_error():
    response = Client(raise_request_exception=False).get("/test/crash")

    assert response.status_code == 500
    assert response["Content-Type"] == "application/json"
    assert response.json() == {"detail": "Internal server error; the error has been logged."}
    assert b"boom" not in response.content


# --- The authentication class on its own ----------------------------------------------------------
def test_authenticate_returns_the_tokens_user():
    user = make_user()
    token = make_token(user)

    authenticated_user, auth = authenticate(**{"X-API-Key": token})

    assert authenticated_user == user
    assert auth is None


@pytest.mark.parametrize("headers,message", [
    ({}, MISSING["detail"]),
    ({"X-API-Key": ""}, MISSING["detail"]),
    ({"X-API-Key": "bm_unknown"}, INVALID["detail"]),
])
def test_authenticate_raises_authentication_failed_with_the_contract_message(headers, message):
    with pytest.raises(exceptions.AuthenticationFailed) as failure:
        authenticate(**headers)

    assert str(failure.value.detail) == message


def test_authenticate_refuses_a_revoked_token():
    token = make_token(make_user())
    revoke(token)

    with pytest.raises(exceptions.AuthenticationFailed) as failure:
        authenticate(**{"X-API-Key": token})

    assert str(failure.value.detail) == INVALID["detail"]


def test_authenticate_asks_for_no_challenge_so_drf_answers_403():
    request = Request(APIRequestFactory().get("/anything"))

    assert APIKeyAuthentication().authenticate_header(request) is None
