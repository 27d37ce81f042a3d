"""A user's webhook endpoint and its signing secret."""
from __future__ import annotations

import ipaddress
import re
import secrets
import socket
from typing import Callable
from urllib.parse import urlsplit

from django.conf import settings
from django.db import transaction

from accounts.models import User

URL_MAX_LENGTH = User._meta.get_field("webhook_url").max_length


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
    if not _is_host_name(parts.hostname):
        raise InvalidWebhookURL(f"webhook_url host {parts.hostname!r} is not a valid host name or address.")
    if parts.username or parts.password:
        raise InvalidWebhookURL("webhook_url must not carry credentials; the deliveries are signed instead.")
    if not settings.WEBHOOK_ALLOW_PRIVATE_ADDRESSES and _is_private(parts.hostname):
        raise InvalidWebhookURL(f"webhook_url host {parts.hostname!r} is a private or loopback address.")
    return url


_DNS_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)\Z")


def _is_host_name(host: str) -> bool:
    """An IP address or a DNS name (IDN allowed): a host no delivery could ever reach ("a*", a
    label over 63 characters) is refused when it is set, not retried for a day. It also keeps
    names idna cannot encode from getaddrinfo (under gevent, its thread pool prints the error as a
    traceback: a non-JSON log line)."""
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        pass
    try:
        name = host.encode("idna").decode("ascii").lower().removesuffix(".")
    except UnicodeError:
        return False
    return len(name) <= 253 and all(_DNS_LABEL.match(label) for label in name.split("."))


def _is_private(host: str) -> bool:
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except (socket.gaierror, UnicodeError):
        # Unresolvable (or not even encodable as a DNS name): nothing private to reach.
        return False
    return any(is_private_address(a) for a in addresses)


# IPv6 prefixes that carry an IPv4 address in their last 32 bits: NAT64 (RFC 6052, RFC 8215).
_NAT64 = (ipaddress.IPv6Network("64:ff9b::/96"), ipaddress.IPv6Network("64:ff9b:1::/48"))


def is_private_address(address: str) -> bool:
    """Any address a webhook must not reach unless WEBHOOK_ALLOW_PRIVATE_ADDRESSES: everything
    that is not globally routable unicast (private, loopback, link-local, site-local, CGNAT 100.64.0.0/10,
    unspecified, reserved, documentation, benchmarking), multicast, and IPv6 forms that embed such
    an IPv4 address (IPv4-mapped, NAT64, 6to4, Teredo). The sender checks the address it connects
    to with this."""
    ip = ipaddress.ip_address(address.split("%")[0])
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(ip)
        if embedded is not None:  # the translator or tunnel connects to that IPv4 address
            return _refused(embedded)
    return _refused(ip)


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if any(ip in net for net in _NAT64):
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip.sixtofour is not None:
        return ip.sixtofour
    return None  # Teredo (2001::/32) is not global: refused as it is


def _refused(ip) -> bool:
    # Site-local IPv6 (fec0::/10, deprecated by RFC 3879 but still routed inside some networks)
    # is not private to Python's ipaddress, which calls it global.
    site_local = isinstance(ip, ipaddress.IPv6Address) and ip.is_site_local
    return not ip.is_global or ip.is_multicast or ip.is_unspecified or ip.is_reserved or site_local


# Told the id of a user whose webhook URL was just set (PUT /user/webhook, the admin API), in the
# transaction that set it: the webhooks app, a layer above, registers here (WebhooksConfig.ready)
# to re-enable the user's endpoint and send what it held.
_set_listeners: list[Callable[[int], None]] = []


def on_webhook_set(listener: Callable[[int], None]) -> None:
    if listener not in _set_listeners:
        _set_listeners.append(listener)


def webhook_was_set(user_id: int) -> None:
    for listener in _set_listeners:
        listener(user_id)


def set_webhook(user: User, url: str, *, rotate_secret: bool = False) -> tuple[str, str]:
    """Set the webhook URL; the secret is generated once (or rotated on request). Returns both."""
    validate_webhook_url(url)
    with transaction.atomic():
        locked = User.objects.select_for_update().get(pk=user.pk)
        locked.webhook_url = url
        if rotate_secret or not locked.webhook_secret:
            locked.webhook_secret = secrets.token_hex(32)
        locked.save(update_fields=["webhook_url", "webhook_secret"])
        webhook_was_set(locked.pk)
    return url, locked.webhook_secret


def split_data(data: dict) -> tuple[dict, str | None]:
    """The admin API's `data` (Vexa's shape) carries the webhook URL as `data.webhook_url`; it is
    kept in its column. Returns the rest of `data` and the URL: None when not given, "" to remove
    the webhook, else a valid URL. Raises InvalidWebhookURL (the secret is never set this way)."""
    rest = dict(data)
    if "webhook_secret" in rest:
        raise InvalidWebhookURL("webhook_secret cannot be set; it is generated by PUT /user/webhook.")
    if "webhook_url" not in rest:
        return rest, None
    url = rest.pop("webhook_url")
    if url is None or url == "":
        return rest, ""
    if not isinstance(url, str):
        raise InvalidWebhookURL("webhook_url must be a string.")
    if len(url) > URL_MAX_LENGTH:
        raise InvalidWebhookURL(f"webhook_url must be at most {URL_MAX_LENGTH} characters.")
    return rest, validate_webhook_url(url)


def apply_url(user: User, url: str | None) -> list[str]:
    """Set (or with "" remove) the webhook URL on `user` (locked or new, saved by the caller); a
    URL gets a secret if the user has none yet, so its deliveries are signed (PUT /user/webhook
    answers it). Returns the changed fields."""
    if url is None:
        return []
    user.webhook_url = url
    if url and not user.webhook_secret:
        user.webhook_secret = secrets.token_hex(32)
        return ["webhook_url", "webhook_secret"]
    return ["webhook_url"]
