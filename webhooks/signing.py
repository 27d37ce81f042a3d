"""The webhook signature: HMAC-SHA256 of "{timestamp}.{body}" with the user's webhook secret.

docs/webhooks-and-events.md shows receivers the same recipe; tests verify deliveries with its snippet.
"""
from __future__ import annotations

import hashlib
import hmac


def signature(secret: str, timestamp: str, body: bytes) -> str:
    """The X-Webhook-Signature value: `sha256=<hex>`."""
    mac = hmac.new(secret.encode("utf-8"), timestamp.encode("ascii") + b"." + body, hashlib.sha256)
    return f"sha256={mac.hexdigest()}"


def verify(secret: str, timestamp: str, body: bytes, header: str) -> bool:
    return hmac.compare_digest(signature(secret, timestamp, body), header)
