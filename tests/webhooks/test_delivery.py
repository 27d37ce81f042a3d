"""One delivery attempt at a time, against a real HTTP receiver on localhost: the signature (with
the recipe of docs/webhooks-and-events.md), the headers and body, the retry policy per answer, the retry window, claims
that keep a delivery from being sent twice, and secrets kept out of logs and rows."""
from __future__ import annotations

import json
import logging
import re
import threading
from datetime import timedelta
from pathlib import Path

import pytest
from django.conf import settings as django_settings
from django.db import connections
from django.utils import timezone

from accounts import webhook
from accounts.models import User
from tests.webhooks.conftest import new_meeting
from tests.webhooks.receiver import Answer, Blackhole
from webhooks import delivery
from webhooks.models import WebhookAttempt, WebhookDelivery

pytestmark = pytest.mark.django_db


def documented_verify():
    """The `verify` function of the documented snippet (docs/webhooks-and-events.md), executed as written."""
    page = (Path(django_settings.BASE_DIR) / "docs" / "webhooks-and-events.md").read_text()
    section = page.split("\n## Webhooks\n", 1)[1].split("\n## ", 1)[0]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert len([line for line in code.splitlines() if line.strip()]) <= 5
    namespace: dict = {}
    exec(code, namespace)  # noqa: S102 (the documented snippet)
    return namespace["verify"]


def pending(user) -> WebhookDelivery:
    """A new pending delivery (the meeting's first status change)."""
    return WebhookDelivery.objects.get(meeting=new_meeting(user))


def make_due(d: WebhookDelivery) -> None:
    WebhookDelivery.objects.filter(pk=d.pk).update(next_attempt_at=timezone.now())


def fresh(d: WebhookDelivery) -> WebhookDelivery:
    return WebhookDelivery.objects.get(pk=d.pk)


# --- What is sent ----------------------------------------------------------------------------------
def test_the_signature_verifies_with_the_readme_recipe(hook_user, receiver):
    d = pending(hook_user)

    assert delivery.attempt(d.pk) == "succeeded"

    [got] = receiver.posts()
    verify = documented_verify()
    assert verify(hook_user.secret, got.headers, got.body) is True
    assert verify("another-secret", got.headers, got.body) is False
    assert verify(hook_user.secret, got.headers, got.body + b" ") is False
    assert re.fullmatch(r"sha256=[0-9a-f]{64}", got.headers["X-Webhook-Signature"])


def test_the_request_carries_the_stored_body_and_the_documented_headers(hook_user, receiver):
    d = pending(hook_user)

    delivery.attempt(d.pk)

    [got] = receiver.posts()
    assert got.body == d.payload.encode()
    assert json.loads(got.body)["event"] == "meeting.status_change"
    assert got.headers["Content-Type"] == "application/json"
    assert got.headers["X-Webhook-Id"] == str(d.webhook_id)
    assert got.headers["X-Webhook-Event"] == "meeting.status_change"
    assert got.headers["X-Webhook-Attempt"] == "1"
    assert abs(int(got.headers["X-Webhook-Timestamp"]) - timezone.now().timestamp()) < 5
    d = fresh(d)
    assert (d.status, d.attempts, d.last_response_code, d.last_response_body) == ("succeeded", 1, 200, "ok")
    assert d.delivered_at is not None and d.next_attempt_at is None and d.claimed_until is None
    assert d.url == receiver.url


# --- Retry policy ----------------------------------------------------------------------------------
def test_a_500_is_retried_after_a_backoff_and_the_retry_sends_the_same_event(hook_user, receiver, settings):
    settings.WEBHOOK_BACKOFF_BASE_SECONDS = 10
    settings.WEBHOOK_BACKOFF_MAX_SECONDS = 100
    receiver.answer(Answer(500, b"boom"))
    d = pending(hook_user)

    before = timezone.now()
    assert delivery.attempt(d.pk) == "retry"
    d = fresh(d)
    assert (d.status, d.attempts, d.last_response_code, d.last_response_body) == ("pending", 1, 500, "boom")
    # Base 10 s: the first retry is due in [5, 10] s.
    assert before + timedelta(seconds=5) <= d.next_attempt_at <= timezone.now() + timedelta(seconds=10)
    assert delivery.attempt(d.pk) is None  # not due yet: nothing is sent
    assert len(receiver.posts()) == 1

    make_due(d)
    assert delivery.attempt(d.pk) == "succeeded"

    first, second = receiver.posts()
    assert first.body == second.body
    assert first.webhook_id == second.webhook_id == str(d.webhook_id)
    assert (first.headers["X-Webhook-Attempt"], second.headers["X-Webhook-Attempt"]) == ("1", "2")
    verify = documented_verify()
    assert verify(hook_user.secret, first.headers, first.body) and verify(hook_user.secret, second.headers, second.body)
    log = list(WebhookAttempt.objects.filter(delivery=d).values_list("number", "response_code", "outcome"))
    assert log == [(1, 500, "retry"), (2, 200, "succeeded")]
    assert fresh(d).status == "succeeded"


@pytest.mark.parametrize("code", [408, 429, 500, 502, 503, 504])
def test_retryable_answers_are_retried(hook_user, receiver, code):
    receiver.answer(code)
    d = pending(hook_user)

    assert delivery.attempt(d.pk) == "retry"
    assert fresh(d).status == "pending"
    make_due(d)
    assert delivery.attempt(d.pk) == "succeeded"
    assert len(receiver.posts()) == 2


@pytest.mark.parametrize("code", [400, 401, 403, 404, 410, 422])
def test_other_4xx_fail_at_once(hook_user, receiver, code):
    receiver.answer(code)
    d = pending(hook_user)

    assert delivery.attempt(d.pk) == "failed"

    d = fresh(d)
    assert (d.status, d.attempts, d.last_response_code, d.next_attempt_at) == ("failed", 1, code, None)
    make_due(d)
    assert delivery.attempt(d.pk) is None
    assert len(receiver.posts()) == 1


def test_a_redirect_is_not_followed_and_fails_the_delivery(hook_user, receiver):
    receiver.answer(Answer(302, b"", {"Location": f"http://127.0.0.1:{receiver.port}/elsewhere"}))
    d = pending(hook_user)

    assert delivery.attempt(d.pk) == "failed"

    assert len(receiver.posts("/hook")) == 1
    assert receiver.posts("/elsewhere") == []
    assert fresh(d).last_response_code == 302


def test_a_refused_connection_is_retried(hook_user, receiver):
    receiver.down()
    d = pending(hook_user)

    assert delivery.attempt(d.pk) == "retry"

    d = fresh(d)
    assert d.status == "pending" and d.last_response_code is None
    assert "refused" in d.last_error.lower()


def test_a_receiver_slower_than_the_timeout_is_retried(hook_user, receiver, settings):
    settings.WEBHOOK_TIMEOUT_SECONDS = 0.3
    receiver.answer(Answer(200, delay=1.5))
    d = pending(hook_user)

    assert delivery.attempt(d.pk) == "retry"

    d = fresh(d)
    assert (d.status, d.last_response_code, d.last_error) == ("pending", None, "timeout")
    assert WebhookAttempt.objects.get(delivery=d).duration_ms < 1200


def test_a_host_that_never_accepts_the_connection_is_given_up_after_the_connect_timeout(hook_user, settings):
    settings.WEBHOOK_TIMEOUT_SECONDS = 10
    settings.WEBHOOK_CONNECT_TIMEOUT_SECONDS = 0.3
    hole = Blackhole()
    try:
        webhook.set_webhook(hook_user, hole.url)
        d = pending(hook_user)

        assert delivery.attempt(d.pk) == "retry"
    finally:
        hole.close()

    d = fresh(d)
    assert (d.status, d.last_response_code, d.last_error) == ("pending", None, "connect timeout")
    assert WebhookAttempt.objects.get(delivery=d).duration_ms < 1000


def test_retry_after_lengthens_the_wait_up_to_the_maximum(hook_user, receiver):
    receiver.answer(Answer(429, headers={"Retry-After": "0.9"}))
    d = pending(hook_user)

    before = timezone.now()
    delivery.attempt(d.pk)

    assert fresh(d).next_attempt_at >= before + timedelta(seconds=0.9)


def test_no_retry_is_scheduled_past_the_retry_window(hook_user, receiver):
    receiver.answer(500)
    d = pending(hook_user)
    WebhookDelivery.objects.filter(pk=d.pk).update(give_up_at=timezone.now() + timedelta(seconds=0.05))

    assert delivery.attempt(d.pk) == "failed"

    d = fresh(d)
    assert (d.status, d.last_response_code, d.next_attempt_at) == ("failed", 500, None)
    assert WebhookAttempt.objects.get(delivery=d).outcome == "failed"


def test_an_old_undelivered_event_still_gets_one_attempt(hook_user, receiver):
    d = pending(hook_user)
    WebhookDelivery.objects.filter(pk=d.pk).update(give_up_at=timezone.now() - timedelta(days=2))

    assert delivery.attempt(d.pk) == "succeeded"


# --- Never twice ------------------------------------------------------------------------------------
def test_a_duplicate_run_after_success_sends_nothing(hook_user, receiver):
    d = pending(hook_user)
    assert delivery.attempt(d.pk) == "succeeded"
    make_due(d)

    assert delivery.attempt(d.pk) is None
    assert delivery.attempt(d.pk) is None
    assert len(receiver.posts()) == 1
    assert fresh(d).attempts == 1


def test_a_delivery_whose_attempt_is_running_is_not_attempted_again_until_its_lease_ends(hook_user, receiver):
    d = pending(hook_user)
    WebhookDelivery.objects.filter(pk=d.pk).update(claimed_until=timezone.now() + timedelta(seconds=30))

    assert delivery.attempt(d.pk) is None
    assert receiver.posts() == []

    WebhookDelivery.objects.filter(pk=d.pk).update(claimed_until=timezone.now() - timedelta(seconds=1))
    assert delivery.attempt(d.pk) == "succeeded"


def test_unknown_deliveries_are_ignored():
    assert delivery.attempt(10**12) is None


@pytest.mark.django_db(transaction=True)
def test_concurrent_duplicate_runs_send_once(hook_user, receiver):
    receiver.default = Answer(200, delay=0.5)
    d = pending(hook_user)
    results = []
    barrier = threading.Barrier(4)

    def run():
        try:
            barrier.wait()
            results.append(delivery.attempt(d.pk))
        finally:
            connections.close_all()

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert sorted(results, key=str) == [None, None, None, "succeeded"]
    assert len(receiver.posts()) == 1
    assert fresh(d).attempts == 1


# --- Where it goes, signed how ------------------------------------------------------------------------
def test_a_rotated_secret_signs_the_retries(hook_user, receiver):
    receiver.answer(500)
    d = pending(hook_user)
    delivery.attempt(d.pk)
    _url, new_secret = webhook.set_webhook(hook_user, receiver.url, rotate_secret=True)
    make_due(d)

    delivery.attempt(d.pk)

    first, second = receiver.posts()
    verify = documented_verify()
    assert verify(hook_user.secret, first.headers, first.body)
    assert verify(new_secret, second.headers, second.body)
    assert not verify(hook_user.secret, second.headers, second.body)


def test_a_removed_webhook_fails_the_delivery_without_a_request(hook_user, receiver):
    d = pending(hook_user)
    User.objects.filter(pk=hook_user.pk).update(webhook_url="")

    assert delivery.attempt(d.pk) == "failed"
    assert receiver.posts() == []
    assert "no webhook" in fresh(d).last_error


def test_a_private_address_is_refused_at_send_time_when_the_setting_forbids_it(hook_user, receiver, settings):
    d = pending(hook_user)
    settings.WEBHOOK_ALLOW_PRIVATE_ADDRESSES = False

    assert delivery.attempt(d.pk) == "failed"
    assert receiver.posts() == []
    assert "private or loopback" in fresh(d).last_error


def test_a_long_answer_is_stored_truncated_and_without_nul(hook_user, receiver):
    receiver.answer(Answer(500, b"x\x00" * 5000))
    d = pending(hook_user)

    delivery.attempt(d.pk)

    d = fresh(d)
    assert d.last_response_body == "x" * 1024
    assert WebhookAttempt.objects.get(delivery=d).response_body == "x" * 1024


# --- Secrets ---------------------------------------------------------------------------------------
def test_the_secret_appears_in_no_log_and_no_delivery_row(hook_user, receiver, caplog):
    caplog.set_level(logging.DEBUG)
    receiver.answer(Answer(500, b"server error"), 404)
    first, second, third = pending(hook_user), pending(hook_user), pending(hook_user)

    assert delivery.attempt(first.pk) == "retry"  # 500
    assert delivery.attempt(second.pk) == "failed"  # 404
    receiver.down()
    assert delivery.attempt(third.pk) == "retry"  # refused
    receiver.up()
    make_due(first)
    assert delivery.attempt(first.pk) == "succeeded"

    assert f"webhook {first.pk} meeting.status_change: delivered" in caplog.text  # the log is captured
    assert f"webhook {second.pk} meeting.status_change: failed" in caplog.text
    signatures = [r.headers["X-Webhook-Signature"].removeprefix("sha256=") for r in receiver.posts()]
    for text in (caplog.text, *(r.getMessage() for r in caplog.records)):
        assert hook_user.secret not in text
        assert not any(sig in text for sig in signatures)
    rows = WebhookDelivery.objects.filter(user=hook_user)
    stored = json.dumps(list(rows.values()), default=str) + json.dumps(list(WebhookAttempt.objects.filter(
        delivery__in=rows).values()), default=str)
    assert hook_user.secret not in stored


def test_a_late_answer_is_logged_but_does_not_undo_a_newer_attempt(hook_user, receiver):
    """An attempt outlives its lease (a stuck worker); a newer attempt delivers; the old attempt's
    500 then arrives: it is recorded, and the delivery stays delivered."""
    from webhooks import sender
    from webhooks.policy import Verdict

    d = pending(hook_user)
    stale = delivery._claim(d.pk)
    WebhookDelivery.objects.filter(pk=d.pk).update(claimed_until=timezone.now() - timedelta(seconds=1))
    assert delivery.attempt(d.pk) == "succeeded"

    delivery._record(stale, sender.Result(500, "late"), Verdict.RETRY)

    d = fresh(d)
    assert (d.status, d.attempts, d.last_response_code) == ("succeeded", 2, 200)
    assert list(WebhookAttempt.objects.filter(delivery=d).values_list("number", "response_code")) == [
        (2, 200), (1, 500)]
