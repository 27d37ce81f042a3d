"""`manage.py create_user` and `manage.py create_token`: what the README and docs/local-stack.md tell operators to run."""
from __future__ import annotations

import re
from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from accounts.models import APIToken, User
from accounts.services import user_for_token
from tests.factories import make_user

pytestmark = pytest.mark.django_db

TOKEN = re.compile(r"token (\d+)(?: for \S+)?: (\S+)$", re.MULTILINE)


def run(*args) -> str:
    out = StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


def printed_token(output: str) -> tuple[int, str]:
    match = TOKEN.search(output)
    assert match, f"no token in output: {output!r}"
    return int(match.group(1)), match.group(2)


# --- create_user -----------------------------------------------------------------------------------
def test_create_user_creates_the_user_with_its_name_and_limit():
    output = run("create_user", "alice@example.com", "--name", "Alice", "--max-concurrent-bots", "3")

    user = User.objects.get(email="alice@example.com")
    assert (user.name, user.max_concurrent_bots) == ("Alice", 3)
    assert output.strip() == f"created: user {user.id} <alice@example.com>"
    assert not user.api_tokens.exists()


def test_create_user_without_a_limit_gets_the_default_limit(settings):
    settings.DEFAULT_MAX_CONCURRENT_BOTS = 2

    run("create_user", "bob@example.com")

    assert User.objects.get(email="bob@example.com").max_concurrent_bots == 2


def test_create_user_is_idempotent_and_changes_nothing_on_an_existing_user():
    first = run("create_user", "carol@example.com", "--name", "Carol")
    first_limit = User.objects.get(email="carol@example.com").max_concurrent_bots

    again = run("create_user", "CAROL@example.com", "--name", "Someone else", "--max-concurrent-bots", "7")

    user = User.objects.get(email__iexact="carol@example.com")
    assert User.objects.filter(email__iexact="carol@example.com").count() == 1
    assert first.startswith("created:")
    assert again.strip() == f"exists: user {user.id} <carol@example.com>"
    assert (user.name, user.max_concurrent_bots) == ("Carol", first_limit)


def test_create_user_with_token_prints_a_token_that_authenticates_the_user():
    output = run("create_user", "dave@example.com", "--token")

    token_id, token = printed_token(output)
    user = User.objects.get(email="dave@example.com")
    assert APIToken.objects.get(pk=token_id).user == user
    assert user_for_token(token) == user


def test_create_user_with_token_on_an_existing_user_issues_a_new_token():
    user = make_user(email="erin@example.com")

    output = run("create_user", "erin@example.com", "--token")

    assert output.startswith(f"exists: user {user.id}")
    assert user_for_token(printed_token(output)[1]) == user


@pytest.mark.parametrize("email", ["not-an-email", "", "a@b@example.com"])
def test_create_user_refuses_an_invalid_email_with_a_command_error(email):
    with pytest.raises(CommandError, match="email"):
        run("create_user", email)

    assert not User.objects.exists()


def test_create_user_refuses_a_negative_limit_with_a_command_error():
    with pytest.raises(CommandError, match="max-concurrent-bots"):
        run("create_user", "frank@example.com", "--max-concurrent-bots", "-1")

    assert not User.objects.exists()


# --- create_token ----------------------------------------------------------------------------------
def test_create_token_by_email_prints_a_token_that_authenticates_the_user():
    user = make_user(email="grace@example.com")

    output = run("create_token", "grace@example.com")

    token_id, token = printed_token(output)
    assert output.strip() == f"token {token_id} for grace@example.com: {token}"
    assert user_for_token(token) == user


def test_create_token_finds_the_email_whatever_its_case():
    user = make_user(email="heidi@example.com")

    output = run("create_token", "Heidi@EXAMPLE.com")

    assert user_for_token(printed_token(output)[1]) == user


def test_create_token_by_id_prints_a_token_that_authenticates_the_user():
    user = make_user()

    output = run("create_token", str(user.id))

    assert user_for_token(printed_token(output)[1]) == user


def test_create_token_stores_only_the_hash():
    user = make_user()

    token_id, token = printed_token(run("create_token", str(user.id)))

    record = APIToken.objects.get(pk=token_id)
    assert token not in (record.token_hash, record.prefix)
    assert not APIToken.objects.filter(token_hash=token).exists()


@pytest.mark.parametrize("who", ["nobody@example.com", "987654321", "99999999999999999999"])
def test_create_token_for_an_unknown_user_raises_a_command_error_that_says_what_to_do(who):
    make_user()

    with pytest.raises(CommandError) as failure:
        run("create_token", who)

    assert who in str(failure.value)
    assert "create_user" in str(failure.value)
    assert not APIToken.objects.exists()
