"""Account services: the admin API, the management commands and the Django admin all call these."""
from __future__ import annotations

import secrets
from dataclasses import dataclass

from django.db import IntegrityError, transaction
from django.utils import timezone

from accounts import webhook
from accounts.models import APIToken, User, hash_token
from common.compiled import CompiledQuery

TOKEN_PREFIX = "bm_"


@dataclass(frozen=True)
class IssuedToken:
    """A freshly issued token: the only moment the clear value exists."""

    record: APIToken
    token: str


def get_or_create_user(email: str, **fields) -> tuple[User, bool]:
    """The user with this email (case-insensitive), created if there is none (with `fields`;
    `data` in the admin API's shape, see webhook.split_data, which raises InvalidWebhookURL).

    Two concurrent calls for one email both miss the lookup; the unique index lets one insert win
    and the other then returns the winner's user.
    """
    email = User.objects.normalize_email(email)
    fields = {k: v for k, v in fields.items() if v is not None}
    url = None
    if "data" in fields:
        fields["data"], url = webhook.split_data(fields["data"])
    user = User.objects.filter(email__iexact=email).first()
    if user is not None:
        return user, False
    try:
        with transaction.atomic():
            user = User.objects.create_user(email=email, **fields)
            if url:
                user.save(update_fields=webhook.apply_url(user, url))
            return user, True
    except IntegrityError:
        user = User.objects.filter(email__iexact=email).first()
        if user is None:
            raise
        return user, False


def update_user(user_id: int, changes: dict) -> User:
    """The admin API's PATCH: `data` is merged into the user's data (its webhook_url goes to the
    column, see webhook.split_data, which raises InvalidWebhookURL); other fields are set.
    Raises User.DoesNotExist."""
    changes = dict(changes)
    data, url = webhook.split_data(changes.pop("data")) if "data" in changes else (None, None)
    with transaction.atomic():
        user = User.objects.select_for_update().get(pk=user_id)
        changed = list(changes)
        if data is not None:
            user.data = {**(user.data or {}), **data}
            changed.append("data")
        changed += webhook.apply_url(user, url)
        for name, value in changes.items():
            setattr(user, name, value)
        if changed:
            user.save(update_fields=changed)
        if url:
            webhook.webhook_was_set(user.pk)
    return user


def issue_token(user: User) -> IssuedToken:
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    record = APIToken.objects.create(user=user, token_hash=hash_token(token), prefix=token[:10])
    return IssuedToken(record=record, token=token)


def revoke_token(token_id: int) -> APIToken | None:
    record = APIToken.objects.filter(pk=token_id).first()
    if record is not None and record.revoked_at is None:
        record.revoked_at = timezone.now()
        record.save(update_fields=["revoked_at"])
    return record


# Every API request looks its key up: the statement is built once per database connection
# (building the queryset cost more than running it). token_hash is unique: one row at most.
_TOKEN_WITH_USER = CompiledQuery(
    lambda token_hash: APIToken.objects.select_related("user").filter(token_hash=token_hash),
    APIToken._meta.get_field("token_hash"), "")


def live_token_hashes(token_hashes: set[str]) -> set[str]:
    """Those of these key hashes whose key still authenticates (not revoked, its user active):
    responses held long after their request (event streams) ask again while they run."""
    return set(APIToken.objects.filter(token_hash__in=token_hashes, revoked_at__isnull=True, user__is_active=True)
               .values_list("token_hash", flat=True))


def user_for_token(token: str) -> User | None:
    """The active user of a live (not revoked) token, or None."""
    found = _TOKEN_WITH_USER.fetch(hash_token(token))
    if not found or found[0].revoked_at is not None or not found[0].user.is_active:
        return None
    return found[0].user
