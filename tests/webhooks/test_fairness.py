"""No slow receiver may delay anyone else's deliveries: the per-user cap on attempts in flight
(measured at a real receiver), the connect timeout, and the per-endpoint back-off (state in
PostgreSQL). Real worker threads, real HTTP receivers on localhost."""
from __future__ import annotations

import threading
import time
from datetime import timedelta
from functools import partial

import pytest
from django.db import connections
from django.utils import timezone

from accounts import webhook
from tests.factories import make_user
from tests.waiting import wait_for
from tests.webhooks.conftest import new_meeting, purge_broker, running_worker
from tests.webhooks.receiver import Answer, Receiver
from webhooks import delivery, endpoints
from webhooks.models import DeliveryStatus, Endpoint, WebhookAttempt, WebhookDelivery

wait_until = partial(wait_for, timeout=30)


def hooked_user(receiver: Receiver):
    user = make_user()
    webhook.set_webhook(user, receiver.url)
    user.refresh_from_db()
    return user


def pending(user) -> WebhookDelivery:
    return WebhookDelivery.objects.get(meeting=new_meeting(user))


def fresh(d: WebhookDelivery) -> WebhookDelivery:
    return WebhookDelivery.objects.get(pk=d.pk)


@pytest.fixture
def other_receiver():
    r = Receiver()
    yield r
    r.down()


# --- The per-user cap --------------------------------------------------------------------------------
@pytest.mark.django_db(transaction=True)
def test_a_receiver_that_never_answers_does_not_delay_another_users_deliveries(receiver, other_receiver, settings):
    settings.WEBHOOK_MAX_IN_FLIGHT_PER_USER = 2
    settings.WEBHOOK_TIMEOUT_SECONDS = 5
    receiver.default = Answer(hang=True)  # A's endpoint: accepts, reads, never answers
    a, b = hooked_user(receiver), hooked_user(other_receiver)
    purge_broker()

    with running_worker(concurrency=4):
        for _ in range(6):  # more than A's cap, more than the worker's threads
            new_meeting(a)
        wait_until(lambda: receiver.in_flight == 2, what="A's two attempts in flight")
        time.sleep(0.3)  # A's other tasks run (and are refused by the cap) meanwhile

        started = time.monotonic()
        meeting = new_meeting(b)
        [got] = other_receiver.wait_posts(1, timeout=10)

        assert got.at - started < 1.5  # not after A's 5 s timeouts
        assert wait_until(lambda: fresh(WebhookDelivery.objects.get(meeting=meeting)).status == "succeeded",
                          what="B's delivery")
        assert receiver.max_in_flight == 2
        assert len(receiver.posts()) == 2  # A's other deliveries were never sent while the two hung
        assert WebhookDelivery.objects.filter(user=a, attempts=0, status="pending").count() == 4
        receiver.release()


@pytest.mark.django_db(transaction=True)
def test_the_cap_holds_under_concurrent_attempts_and_a_refusal_is_not_an_attempt(hook_user, receiver, settings):
    settings.WEBHOOK_MAX_IN_FLIGHT_PER_USER = 2
    receiver.default = Answer(200, delay=0.5)
    rows = [pending(hook_user) for _ in range(8)]
    purge_broker()
    results = {}
    barrier = threading.Barrier(len(rows))

    def run(d):
        try:
            barrier.wait()
            results[d.pk] = delivery.attempt(d.pk)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=run, args=(d,)) for d in rows]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert sorted(results.values()) == ["capped"] * 6 + ["succeeded"] * 2
    assert receiver.max_in_flight == 2 and len(receiver.posts()) == 2
    capped = [fresh(d) for d in rows if results[d.pk] == "capped"]
    assert {(d.status, d.attempts, d.last_attempt_at, d.claimed_until) for d in capped} == {("pending", 0, None, None)}
    assert not WebhookAttempt.objects.filter(delivery__in=capped).exists()
    purge_broker()


@pytest.mark.django_db(transaction=True)
def test_capped_and_deferred_deliveries_are_all_delivered_once_the_receiver_recovers(hook_user, receiver, settings):
    """A receiver hangs, then recovers: with twelve events queued, never more than the cap of
    attempts reach it at once, and every event ends delivered: none failed, none dropped."""
    settings.WEBHOOK_MAX_IN_FLIGHT_PER_USER = 2
    settings.WEBHOOK_TIMEOUT_SECONDS = 0.5
    settings.WEBHOOK_ENDPOINT_FAILURE_THRESHOLD = 3
    receiver.default = Answer(hang=True)
    purge_broker()

    with running_worker(concurrency=8):
        rows = [pending(hook_user) for _ in range(12)]
        wait_until(lambda: Endpoint.objects.filter(consecutive_failures__gte=3).exists(),
                   what="the endpoint to back off")
        receiver.default = Answer(200, delay=0.1)
        receiver.release()

        wait_until(lambda: not WebhookDelivery.objects.filter(user=hook_user, status="pending").exists(),
                   what="every delivery to settle")

    assert {fresh(d).status for d in rows} == {DeliveryStatus.SUCCEEDED}
    assert not WebhookAttempt.objects.filter(delivery__user=hook_user, outcome="failed").exists()
    delivered = {r.webhook_id for r in receiver.posts()}
    assert delivered == {str(d.webhook_id) for d in rows}
    assert receiver.max_in_flight <= 2
    state = Endpoint.objects.get(url=receiver.url)
    assert (state.consecutive_failures, state.open_until) == (0, None)


# --- The endpoint back-off ---------------------------------------------------------------------------
@pytest.fixture
def backoff(settings):
    settings.WEBHOOK_ENDPOINT_FAILURE_THRESHOLD = 3
    settings.WEBHOOK_ENDPOINT_BACKOFF_SECONDS = 30
    settings.WEBHOOK_BACKOFF_MAX_SECONDS = 3600
    settings.WEBHOOK_BACKOFF_BASE_SECONDS = 0.01
    return settings


def endpoint(receiver) -> Endpoint:
    return Endpoint.objects.get(url_hash=endpoints.url_hash(receiver.url))


def past_back_off(receiver) -> None:
    """Test setup standing for the passing of the back-off time."""
    Endpoint.objects.filter(pk=endpoint(receiver).pk).update(open_until=timezone.now() - timedelta(seconds=1))


@pytest.mark.django_db
def test_the_endpoint_backs_off_after_the_threshold_and_a_deferral_is_not_an_attempt(hook_user, receiver, backoff):
    receiver.down()
    first, second, third, fourth = (pending(hook_user) for _ in range(4))

    assert [delivery.attempt(d.pk) for d in (first, second)] == ["retry", "retry"]
    assert endpoint(receiver).open_until is None  # below the threshold
    before = timezone.now()
    assert delivery.attempt(third.pk) == "retry"

    state = endpoint(receiver)
    assert state.consecutive_failures == 3 and "refused" in state.last_error.lower()
    assert before + timedelta(seconds=29) < state.open_until < timezone.now() + timedelta(seconds=31)
    WebhookDelivery.objects.filter(pk=fourth.pk).update(give_up_at=timezone.now() - timedelta(hours=1))
    assert delivery.attempt(fourth.pk) == "deferred"
    d = fresh(fourth)
    assert (d.status, d.attempts, d.next_attempt_at, d.held_by_id) == ("pending", 0, state.open_until, state.pk)
    assert not WebhookAttempt.objects.filter(delivery=d).exists()
    # A retry that comes due while the endpoint backs off waits too, uncounted.
    WebhookDelivery.objects.filter(pk=first.pk).update(next_attempt_at=timezone.now())
    assert delivery.attempt(first.pk) == "deferred"
    assert fresh(first).attempts == 1


@pytest.mark.django_db
def test_a_user_who_makes_another_users_receiver_fail_backs_off_only_their_own_deliveries(receiver, backoff):
    """The attack: A points their webhook at B's receiver and provokes 5xx answers until the
    endpoint backs off. B's deliveries to that receiver still go at once."""
    attacker, victim = hooked_user(receiver), hooked_user(receiver)
    receiver.answer(500, 500, 500)  # A's attempts fail; everything after is answered

    assert [delivery.attempt(pending(attacker).pk) for _ in range(3)] == ["retry"] * 3

    assert delivery.attempt(pending(victim).pk) == "succeeded"
    assert Endpoint.objects.get(user=attacker).open_until > timezone.now()
    assert not Endpoint.objects.filter(user=victim).exists()
    assert delivery.attempt(pending(attacker).pk) == "deferred"  # A's own back-off holds


@pytest.mark.django_db
def test_a_receiver_that_fails_for_two_users_backs_off_for_each_on_their_own_count(receiver, backoff):
    a, b = hooked_user(receiver), hooked_user(receiver)
    receiver.down()

    for _ in range(3):
        delivery.attempt(pending(a).pk)
    delivery.attempt(pending(b).pk)

    counts = dict(Endpoint.objects.values_list("user_id", "consecutive_failures"))
    assert counts == {a.pk: 3, b.pk: 1}
    assert delivery.attempt(pending(a).pk) == "deferred"
    assert delivery.attempt(pending(b).pk) == "retry"  # B's own count is below the threshold


@pytest.mark.django_db
def test_a_failed_probe_doubles_the_back_off_up_to_the_maximum(hook_user, receiver, backoff):
    receiver.down()
    for _ in range(3):
        delivery.attempt(pending(hook_user).pk)
    past_back_off(receiver)

    before = timezone.now()
    assert delivery.attempt(pending(hook_user).pk) == "retry"  # the probe

    state = endpoint(receiver)
    assert state.consecutive_failures == 4
    assert before + timedelta(seconds=59) < state.open_until < timezone.now() + timedelta(seconds=61)
    backoff.WEBHOOK_BACKOFF_MAX_SECONDS = 100
    assert endpoints.backoff_seconds(4) == 60 and endpoints.backoff_seconds(50) == 100


@pytest.mark.django_db(transaction=True)
def test_one_probe_at_a_time_and_its_success_resets_the_endpoint_and_wakes_what_it_deferred(
        hook_user, receiver, backoff):
    receiver.down()
    failed = [pending(hook_user) for _ in range(3)]
    for d in failed:
        delivery.attempt(d.pk)
    held = pending(hook_user)
    assert delivery.attempt(held.pk) == "deferred"
    receiver.up()
    receiver.default = Answer(200, delay=0.5)
    past_back_off(receiver)
    purge_broker()

    probe, waiting = pending(hook_user), pending(hook_user)
    results = {}

    def run_probe():
        try:
            results["probe"] = delivery.attempt(probe.pk)
        finally:
            connections.close_all()

    thread = threading.Thread(target=run_probe)
    thread.start()
    receiver.wait_posts(1)
    assert delivery.attempt(waiting.pk) == "deferred"  # while the probe runs
    thread.join()

    assert results["probe"] == "succeeded"
    state = endpoint(receiver)
    assert (state.consecutive_failures, state.open_until) == (0, None) and state.last_success_at
    now = timezone.now()
    for d in (held, waiting):
        d = fresh(d)
        assert d.held_by_id is None and d.next_attempt_at <= now and d.status == "pending"
        assert delivery.attempt(d.pk) == "succeeded"
    purge_broker()


@pytest.mark.django_db(transaction=True)
def test_a_capped_delivery_comes_back_when_the_first_running_lease_ends_not_every_few_seconds(hook_user, settings):
    from tests.support import queued_tasks

    settings.WEBHOOK_MAX_IN_FLIGHT_PER_USER = 2
    settings.WEBHOOK_CAP_RETRY_SECONDS = 2
    now = timezone.now()
    running = [pending(hook_user) for _ in range(2)]
    for d, lease_left in zip(running, (25, 35)):  # two attempts hang at the receiver
        WebhookDelivery.objects.filter(pk=d.pk).update(claimed_until=now + timedelta(seconds=lease_left))
    waiting = pending(hook_user)
    purge_broker()

    assert delivery.attempt(waiting.pk) == "capped"

    [task] = [t for t in queued_tasks("webhooks.deliver") if t["args"] == [waiting.pk]]
    assert abs((task["eta"] - (now + timedelta(seconds=25))).total_seconds()) < 2
    purge_broker()


@pytest.mark.django_db(transaction=True)
def test_the_upgrade_to_per_user_endpoints_drops_the_per_url_state_and_makes_what_it_held_due(hook_user):
    """webhooks 0003/0004: a per-URL row cannot be told apart by user; it goes, and a delivery it
    held back is due again (the redrive job sends it) instead of waiting out a stranger's back-off."""
    from tests.support import latest_migrations
    from tests.support import migrate_to as migrate

    held = pending(hook_user)
    latest = latest_migrations("webhooks")
    try:
        old = migrate([("webhooks", "0002_endpoint_backoff_and_user_cap")])
        OldEndpoint = old.get_model("webhooks", "Endpoint")
        state = OldEndpoint.objects.create(url_hash=endpoints.url_hash(hook_user.webhook_url), url=hook_user.webhook_url,
                                           consecutive_failures=9, open_until=timezone.now() + timedelta(hours=1))
        old.get_model("webhooks", "WebhookDelivery").objects.filter(pk=held.pk).update(
            held_by_id=state.pk, next_attempt_at=state.open_until)

        migrate(latest)

        assert not Endpoint.objects.exists()
        d = fresh(held)
        assert d.held_by_id is None and d.next_attempt_at <= timezone.now() and d.status == "pending"
    finally:
        migrate(latest)
