"""The retry policy as a pure function: which answers are retried, and the backoff schedule."""
from __future__ import annotations

import random

import pytest

from webhooks import policy, signing
from webhooks.policy import Verdict


@pytest.mark.parametrize("code,verdict", [
    (200, Verdict.SUCCEEDED), (201, Verdict.SUCCEEDED), (204, Verdict.SUCCEEDED), (299, Verdict.SUCCEEDED),
    (None, Verdict.RETRY), (408, Verdict.RETRY), (429, Verdict.RETRY), (500, Verdict.RETRY),
    (503, Verdict.RETRY), (599, Verdict.RETRY),
    (301, Verdict.FAILED), (302, Verdict.FAILED), (307, Verdict.FAILED), (308, Verdict.FAILED),
    (400, Verdict.FAILED), (401, Verdict.FAILED), (404, Verdict.FAILED), (409, Verdict.FAILED),
    (413, Verdict.FAILED), (100, Verdict.FAILED),
])
def test_classify(code, verdict):
    assert policy.classify(code) is verdict


def test_a_permanent_network_problem_is_not_retried():
    assert policy.classify(None, permanent_error=True) is Verdict.FAILED


def test_the_default_schedule_doubles_from_10s_to_an_hour_with_jitter_in_the_upper_half():
    nominal = [10, 20, 40, 80, 160, 320, 640, 1280, 2560, 3600, 3600, 3600]
    for attempt, d in enumerate(nominal, start=1):
        delays = [policy.backoff_delay(attempt, base=10, cap=3600, rng=random.Random(seed)) for seed in range(200)]
        assert all(d / 2 <= x <= d for x in delays), (attempt, min(delays), max(delays))
        assert max(delays) - min(delays) > d / 4  # jittered, not a constant


def test_the_backoff_never_overflows():
    assert policy.backoff_delay(10_000, base=10, cap=3600) <= 3600


def test_retry_after_lengthens_the_delay_but_never_past_the_maximum():
    assert policy.backoff_delay(1, base=10, cap=3600, retry_after=120) == 120
    assert policy.backoff_delay(1, base=10, cap=3600, retry_after=99999) == 3600
    assert policy.backoff_delay(1, base=10, cap=3600, retry_after=1) <= 10


@pytest.mark.parametrize("raw,seconds", [("120", 120.0), (" 5 ", 5.0), ("0", 0.0), (None, None), ("", None),
                                         ("-3", None), ("Wed, 21 Oct 2015 07:28:00 GMT", None)])
def test_parse_retry_after(raw, seconds):
    assert policy.parse_retry_after(raw) == seconds


def test_the_signature_is_hmac_sha256_of_timestamp_dot_body():
    # Known value: HMAC-SHA256(key="secret", msg="1700000000.{}").
    import hashlib
    import hmac

    expected = hmac.new(b"secret", b"1700000000.{}", hashlib.sha256).hexdigest()
    assert signing.signature("secret", "1700000000", b"{}") == f"sha256={expected}"
    assert signing.verify("secret", "1700000000", b"{}", f"sha256={expected}")
    assert not signing.verify("secret", "1700000001", b"{}", f"sha256={expected}")
