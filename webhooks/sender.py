"""One HTTP POST of a webhook: no redirects, a timeout, a bounded read of the answer.

Never raises for what the network or the receiver does: the result says what happened.
"""
from __future__ import annotations

import http.client
import socket
import ssl
import time
import urllib.error
import urllib.request
from dataclasses import dataclass

USER_AGENT = "botmanager-webhooks/1"
READ_LIMIT = 64 * 1024  # bytes of the answer read at most
KEEP_BODY = 1024  # characters of the answer stored


@dataclass(frozen=True)
class Result:
    code: int | None  # None: no HTTP response
    body: str = ""  # truncated
    error: str = ""
    duration_ms: int = 0
    retry_after: str | None = None


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None  # the 3xx answer is the result: it raises HTTPError below


_opener = urllib.request.build_opener(_NoRedirect)


def post(url: str, body: bytes, headers: dict[str, str], timeout: float) -> Result:
    request = urllib.request.Request(url, data=body, method="POST",
                                     headers={"User-Agent": USER_AGENT, **headers})
    started = time.monotonic()
    deadline = started + timeout
    try:
        with _opener.open(request, timeout=timeout) as response:
            text = _read(response, deadline)
            return Result(response.status, text, duration_ms=_ms(started))
    except urllib.error.HTTPError as exc:  # a non-2xx answer (3xx included: not followed)
        text = _read(exc, deadline)
        return Result(exc.code, text, duration_ms=_ms(started),
                      retry_after=exc.headers.get("Retry-After") if exc.headers else None)
    except urllib.error.URLError as exc:
        return Result(None, error=_describe(exc.reason), duration_ms=_ms(started))
    except (OSError, http.client.HTTPException, ValueError) as exc:
        # socket timeouts while reading the status line, resets, malformed answers
        return Result(None, error=_describe(exc), duration_ms=_ms(started))


def _read(response, deadline: float) -> str:
    chunks, size = [], 0
    while size < READ_LIMIT and time.monotonic() < deadline:
        try:
            chunk = response.read(min(8192, READ_LIMIT - size))
        except (OSError, http.client.HTTPException):
            break  # the status line is the answer; a body cut short does not change it
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return clean(b"".join(chunks).decode("utf-8", errors="replace"))[:KEEP_BODY]


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
