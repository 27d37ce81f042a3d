"""One HTTP POST of a webhook: no redirects, a short connect timeout inside a whole-attempt
deadline, a bounded read of the answer.

The host is resolved once, and the connection goes to an address of that answer, checked first
when private addresses are refused: a name cannot resolve to a public address for the check and
to a private one for the connection. TLS still verifies the certificate against the host name
(SNI and the Host header carry the name, not the address).

Never raises for what the network or the receiver does: the result says what happened.
"""
from __future__ import annotations

import http.client
import socket
import ssl
import time
from dataclasses import dataclass
from typing import Callable
from urllib.parse import urlsplit

USER_AGENT = "botmanager-webhooks/1"
READ_LIMIT = 64 * 1024  # bytes of the answer read at most
KEEP_BODY = 1024  # characters of the answer stored

_tls = ssl.create_default_context()


@dataclass(frozen=True)
class Result:
    code: int | None  # None: no HTTP response
    body: str = ""  # truncated
    error: str = ""
    duration_ms: int = 0
    retry_after: str | None = None
    # No request was made and none ever could be (a URL we cannot use, a refused address): a
    # retry would change nothing.
    permanent: bool = False


class _Refused(Exception):
    """The URL or the address it resolves to may not be used."""


class _ConnectTimeout(Exception):
    pass


def post(url: str, body: bytes, headers: dict[str, str], timeout: float, *, connect_timeout: float | None = None,
         refuse_address: Callable[[str], bool] | None = None) -> Result:
    """POST `body` to `url`. `timeout` bounds the whole attempt (resolve aside: the system
    resolver has its own); `connect_timeout` the TCP connect to each address. `refuse_address`:
    a resolved address for which it is true is not connected to (the result is permanent)."""
    started = time.monotonic()
    deadline = started + timeout
    try:
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port
        if parts.scheme not in ("http", "https") or not host:
            raise _Refused("webhook_url must be an absolute http:// or https:// URL.")
        port = port or (443 if parts.scheme == "https" else 80)
        addresses = _resolve(host, port)
        if refuse_address is not None:
            refused = [a for _family, a in addresses if refuse_address(a[0])]
            if refused:
                raise _Refused(f"webhook_url host {host!r} is a private or loopback address.")
        sock = _connect(addresses, min(connect_timeout or timeout, timeout), deadline)
        conn = _connection(parts.scheme, host, port, sock, deadline)
        try:
            return _exchange(conn, parts, body, headers, deadline, started)
        finally:
            conn.close()
    except _Refused as exc:
        return Result(None, error=str(exc), duration_ms=_ms(started), permanent=True)
    except _ConnectTimeout:
        return Result(None, error="connect timeout", duration_ms=_ms(started))
    except (OSError, http.client.HTTPException, ValueError, UnicodeError) as exc:
        # DNS failures, refused or reset connections, TLS errors, timeouts while waiting for the
        # answer, malformed answers
        return Result(None, error=_describe(exc), duration_ms=_ms(started))


def _resolve(host: str, port: int) -> list[tuple[int, tuple]]:
    return [(family, sockaddr) for family, _type, _proto, _name, sockaddr
            in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)]


def _connect(addresses: list[tuple[int, tuple]], connect_timeout: float, deadline: float) -> socket.socket:
    """A socket connected to the first of `addresses` that accepts within `connect_timeout`."""
    last: Exception | None = None
    for family, sockaddr in addresses:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.settimeout(min(connect_timeout, remaining))
        try:
            sock.connect(sockaddr)
            return sock
        except (socket.timeout, TimeoutError) as exc:
            sock.close()
            last = _ConnectTimeout(str(exc))
        except OSError as exc:
            sock.close()
            last = exc
    raise last or _ConnectTimeout("no time left to connect")


def _connection(scheme: str, host: str, port: int, sock: socket.socket, deadline: float):
    """An http.client connection over the connected socket (TLS checked against `host`)."""
    if scheme == "https":
        sock.settimeout(_remaining(deadline))
        try:
            sock = _tls.wrap_socket(sock, server_hostname=host)
        except BaseException:
            sock.close()
            raise
        conn = http.client.HTTPSConnection(host, port, context=_tls)
    else:
        conn = http.client.HTTPConnection(host, port)
    conn.sock = sock  # connected already: http.client does not connect again
    return conn


def _exchange(conn, parts, body: bytes, headers: dict[str, str], deadline: float, started: float) -> Result:
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    sock = conn.sock  # http.client lets go of it once an answer says "Connection: close"
    sock.settimeout(_remaining(deadline))
    conn.request("POST", path, body=body, headers={"User-Agent": USER_AGENT, **headers})
    sock.settimeout(_remaining(deadline))
    response = conn.getresponse()  # a 3xx is the answer: redirects are never followed
    text = _read(response, sock, deadline)
    return Result(response.status, text, duration_ms=_ms(started), retry_after=response.getheader("Retry-After"))


def _read(response, sock, deadline: float) -> str:
    chunks, size = [], 0
    while size < READ_LIMIT and time.monotonic() < deadline:
        try:
            sock.settimeout(_remaining(deadline))
            chunk = response.read1(min(8192, READ_LIMIT - size))
        except (OSError, http.client.HTTPException, ValueError):
            break  # the status line is the answer; a body cut short does not change it
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return clean(b"".join(chunks).decode("utf-8", errors="replace"))[:KEEP_BODY]


def _remaining(deadline: float) -> float:
    # A socket timeout of 0 would mean non-blocking: past the deadline, fail at once instead.
    return max(deadline - time.monotonic(), 0.001)


def clean(text: str) -> str:
    # PostgreSQL text cannot hold NUL; the answer is the receiver's, not ours to refuse.
    return text.replace("\x00", "")


def _describe(exc) -> str:
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return "timeout"
    if isinstance(exc, ssl.SSLError):
        return f"TLS error: {exc}"
    return clean(f"{type(exc).__name__}: {exc}")[:500]


def _ms(started: float) -> int:
    return int((time.monotonic() - started) * 1000)
