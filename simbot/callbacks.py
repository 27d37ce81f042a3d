"""HTTP callbacks to the bot manager (stdlib urllib only).

Connection errors and 5xx answers are retried with exponential backoff until the retry budget
runs out: the manager may be restarting, and a lost callback would leave the meeting waiting for
the orphan sweep. A 4xx (404 = unknown connection id) is an answer, not an outage: not retried.
"""
from __future__ import annotations

import http.client
import json
import logging
import time
import urllib.error
import urllib.request

from simbot.config import callback_url

log = logging.getLogger("simbot.callbacks")

FIRST_BACKOFF_SECONDS = 0.1
MAX_BACKOFF_SECONDS = 2.0
REQUEST_TIMEOUT_SECONDS = 5.0


class CallbackClient:
    def __init__(self, exited_url: str, retry_seconds: float, duplicate: bool):
        self.exited_url = exited_url
        self.retry_seconds = retry_seconds
        # The `duplicate_callbacks` knob: every callback is delivered twice, as a retrying bot
        # whose first answer was lost would do.
        self.copies = 2 if duplicate else 1

    def send(self, name: str, body: dict, bearer_token: str | None = None) -> dict | None:
        """POST one callback; returns the manager's JSON answer, or None when it never answered
        2xx. With duplicates, `leave` is reported if any copy's answer carried it."""
        url = callback_url(self.exited_url, name)
        headers = {"Content-Type": "application/json"}
        if bearer_token:
            headers["Authorization"] = f"Bearer {bearer_token}"
        answers = [self._post_with_retry(name, url, body, headers) for _ in range(self.copies)]
        answered = [a for a in answers if a is not None]
        if not answered:
            return None
        result = dict(answered[0])
        if any(a.get("leave") for a in answered):
            result["leave"] = True
        return result

    def _post_with_retry(self, name: str, url: str, body: dict, headers: dict) -> dict | None:
        data = json.dumps(body).encode()
        deadline = time.monotonic() + self.retry_seconds
        backoff = FIRST_BACKOFF_SECONDS
        attempt = 0
        while True:
            attempt += 1
            remaining = deadline - time.monotonic()
            request = urllib.request.Request(url, data=data, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=max(0.5, min(REQUEST_TIMEOUT_SECONDS, remaining))) as resp:
                    answer = _json_object(resp.read())
                    log.info("callback %s %s -> %s %s", name, json.dumps(body), resp.status, json.dumps(answer))
                    return answer
            except urllib.error.HTTPError as exc:
                if exc.code < 500:
                    log.warning("callback %s -> HTTP %s (not retried): %s", name, exc.code, _text(exc.read()))
                    return None
                failure = f"HTTP {exc.code}"
            except (OSError, http.client.HTTPException) as exc:  # URLError, refused, reset, timeout
                failure = f"{type(exc).__name__}: {exc}"
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                log.error("callback %s gave up after %d attempts (%.1fs): %s", name, attempt,
                          self.retry_seconds, failure)
                return None
            log.warning("callback %s attempt %d failed (%s); retrying in %.2fs", name, attempt, failure,
                        min(backoff, remaining))
            time.sleep(min(backoff, remaining))
            backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)


def _json_object(payload: bytes) -> dict:
    """The answer body as a dict; a 2xx with a non-JSON body still counts as delivered."""
    try:
        value = json.loads(payload or b"{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _text(payload: bytes) -> str:
    return payload.decode("utf-8", "replace")[:200]
