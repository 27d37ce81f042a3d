"""A user's webhook endpoint and its signing secret."""
from __future__ import annotations

import ipaddress
import secrets
import socket
from urllib.parse import urlsplit

from django.conf import settings
from django.db import transaction

from .models import User


class InvalidWebhookURL(ValueError):
    pass


def validate_webhook_url(url: str) -> str:
    try:
        # urlsplit refuses a malformed IPv6 host; `.port` refuses a port out of 0-65535.
        parts = urlsplit(url)
        parts.port  # noqa: B018 (validates)
    except ValueError as exc:
        raise InvalidWebhookURL(f"webhook_url is not a valid URL: {exc}.") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidWebhookURL("webhook_url must be an absolute http:// or https:// URL.")
    if parts.username or parts.password:
        raise InvalidWebhookURL("webhook_url must not carry credentials; the deliveries are signed instead.")
    if not settings.WEBHOOK_ALLOW_PRIVATE_ADDRESSES and _is_private(parts.hostname):
        raise InvalidWebhookURL(f"webhook_url host {parts.hostname!r} is a private or loopback address.")
    return url


def _is_private(host: str) -> bool:
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except (socket.gaierror, UnicodeError):
        # Unresolvable (or not even encodable as a DNS name): nothing private to reach.
        return False
    return any(ipaddress.ip_address(a.split("%")[0]).is_private or ipaddress.ip_address(a.split("%")[0]).is_loopback
               for a in addresses)


def set_webhook(user: User, url: str, *, rotate_secret: bool = False) -> tuple[str, str]:
    """Set the webhook URL; the secret is generated once (or rotated on request). Returns both."""
    validate_webhook_url(url)
    with transaction.atomic():
        locked = User.objects.select_for_update().get(pk=user.pk)
        data = dict(locked.data or {})
        data["webhook_url"] = url
        if rotate_secret or not data.get("webhook_secret"):
            data["webhook_secret"] = secrets.token_hex(32)
        locked.data = data
        locked.save(update_fields=["data"])
    return url, data["webhook_secret"]
