"""The address of the client that sent a request, as the admin login lockout (django-axes) and
/metrics judge it.

X-Forwarded-For is written by whoever sent the request, so it is believed only when the request
comes from one of TRUSTED_PROXY_ADDRESSES (the reverse proxy, which appends the address it saw).
Anyone else who sends the header is judged by the address of their own connection: a client
cannot pick the address it is locked out under, nor borrow the real operator's.
"""
from __future__ import annotations

import ipaddress
import socket
import time

from django.conf import settings

# A proxy given by name (compose's `proxy`: its address changes when its container is recreated)
# is resolved again after this long.
_NAME_TTL_SECONDS = 30.0
_resolved: dict[str, tuple[float, frozenset]] = {}

_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _parse(address: str | None):
    try:
        ip = ipaddress.ip_address((address or "").strip().split("%")[0])
    except ValueError:
        return None
    # A dual-stack listener sees an IPv4 peer as ::ffff:a.b.c.d: the same proxy, the same client.
    return getattr(ip, "ipv4_mapped", None) or ip


def _networks(entry: str) -> frozenset[_Network]:
    """An address, a network (CIDR) or a host name, as the networks it stands for."""
    try:
        return frozenset({ipaddress.ip_network(entry, strict=False)})
    except ValueError:
        pass
    now = time.monotonic()
    cached = _resolved.get(entry)
    if cached and now - cached[0] < _NAME_TTL_SECONDS:
        return cached[1]
    try:
        found = frozenset(ipaddress.ip_network(info[4][0].split("%")[0])
                          for info in socket.getaddrinfo(entry, None, proto=socket.IPPROTO_TCP))
    except (socket.gaierror, UnicodeError, ValueError):
        found = frozenset()  # not resolvable now: nobody is that proxy
    _resolved[entry] = (now, found)
    return found


def is_trusted_proxy(address: str | None) -> bool:
    ip = _parse(address)
    if ip is None:
        return False
    return any(ip in net for entry in settings.TRUSTED_PROXY_ADDRESSES for net in _networks(entry)
               if net.version == ip.version)


def forwarded(request) -> bool:
    """Whether the request says it was relayed by a proxy (whichever address sent it)."""
    return any(request.META.get(h) for h in ("HTTP_X_FORWARDED_FOR", "HTTP_FORWARDED", "HTTP_X_REAL_IP"))


def client_address(request) -> str | None:
    """REMOTE_ADDR, or, when that is a trusted proxy, the right-most X-Forwarded-For entry that is
    not itself a trusted proxy (entries left of it were written by the client and prove nothing)."""
    remote = request.META.get("REMOTE_ADDR")
    if not is_trusted_proxy(remote):
        return remote
    hops = [h.strip() for h in request.META.get("HTTP_X_FORWARDED_FOR", "").split(",") if h.strip()]
    for hop in reversed(hops):
        if _parse(hop) is None:
            return remote  # a malformed chain: judge the proxy's own connection
        if not is_trusted_proxy(hop):
            return str(_parse(hop))
    return remote
