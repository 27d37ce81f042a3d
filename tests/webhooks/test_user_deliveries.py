"""What a user sees of their webhook and does with it: `GET /user/webhook/deliveries` (their own
deliveries only, with attempts, by state, a page after a signed cursor), `POST
/user/webhook/redeliver` (by delivery ids or an event-log range, with the original ids and bodies),
and the endpoint's health (`GET /user/webhook`; disabled after failing for long enough, deliveries
held meanwhile, `PUT /user/webhook` re-enables it and sends them)."""
from __future__ import annotations

import json
from datetime import timedelta
from functools import partial

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from accounts import webhook
from meetings.events import log as events
from meetings.lifecycle import transitions as lifecycle
from meetings.lifecycle.statuses import MeetingStatus, TransitionSource
from tests.factories import make_token, make_user
from tests.http import answer
from tests.waiting import wait_for
from tests.webhooks.conftest import new_meeting
from tests.webhooks.receiver import Answer
from webhooks import delivery
from webhooks.models import Endpoint, WebhookDelivery

pytestmark = pytest.mark.django_db
S = MeetingStatus
wait_until = partial(wait_for, timeout=20)


def client_of(user) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_X_API_KEY=make_token(user))
    return client


@pytest.fixture
def client(hook_user) -> APIClient:
    return client_of(hook_user)


def user_with_webhook(receiver):
    user = make_user()
    webhook.set_webhook(user, receiver.url)
    user.refresh_from_db()
    return user


def listed(client, **query) -> dict:
    return answer(client.get("/user/webhook/deliveries", query), 200)


def new_delivery(user) -> WebhookDelivery:
    """The first status change of a new meeting of `user`, pending."""
    return WebhookDelivery.objects.get(meeting=new_meeting(user))


def due_now(d: WebhookDelivery) -> None:
    WebhookDelivery.objects.filter(pk=d.pk).update(next_attempt_at=timezone.now())


def fresh(d: WebhookDelivery) -> WebhookDelivery:
    return WebhookDelivery.objects.get(pk=d.pk)


def advance_meeting(meeting, *statuses) -> None:
    for to_status in statuses:
        assert lifecycle.transition(meeting.id, to_status, source=TransitionSource.BOT_CALLBACK).applied


def logged(user) -> list[events.Event]:
    """The user's event log, as GET /events lists it (read here: a test's open transaction would
    hold its events back from the API's settled page)."""
    return events.page(user.pk, events.START, 100, settled=False)


def disable_after_failing(user, receiver, settings) -> WebhookDelivery:
    """Make the user's endpoint fail past WEBHOOK_ENDPOINT_DISABLE_AFTER_SECONDS: a first failure,
    the streak moved back in time, a second failure. Returns the failing delivery."""
    settings.WEBHOOK_ENDPOINT_DISABLE_AFTER_SECONDS = 3600
    receiver.default = Answer(500, b"down")
    failing = new_delivery(user)
    assert delivery.attempt(failing.pk) == "retry"
    Endpoint.objects.filter(user=user).update(failing_since=timezone.now() - timedelta(hours=2))
    due_now(failing)
    assert delivery.attempt(failing.pk) == "retry"
    return failing


# --- Listing ---------------------------------------------------------------------------------------
def test_a_delivery_is_listed_with_its_event_meeting_state_and_attempts(client, hook_user, receiver):
    receiver.answer(Answer(500, b"x" * 300), Answer(200, b"thanks"))
    d = new_delivery(hook_user)
    delivery.attempt(d.pk)
    due_now(d)
    delivery.attempt(d.pk)

    [item] = listed(client)["deliveries"]

    assert item["id"] == d.pk
    assert item["event_id"] == str(d.webhook_id)
    assert item["event"] == "meeting.status_change"
    assert item["meeting"] == {"platform": d.meeting.platform, "native_meeting_id": d.meeting.native_meeting_id}
    assert item["state"] == "delivered"
    first, second = item["attempts"]
    assert (first["number"], first["http_status"], first["error"], first["response"]) == (1, 500, None, "x" * 200)
    assert (second["http_status"], second["response"]) == (200, "thanks")
    assert isinstance(first["duration_ms"], int) and first["at"] <= second["at"]


def test_a_connection_error_is_shown_as_its_class_without_an_http_status(client, hook_user, receiver):
    receiver.down()
    d = new_delivery(hook_user)
    delivery.attempt(d.pk)

    [attempt] = listed(client)["deliveries"][0]["attempts"]

    assert attempt["http_status"] is None
    assert attempt["error"] == "ConnectionRefusedError"


def test_the_listing_never_shows_the_secret_nor_the_body_sent(client, hook_user, receiver):
    d = new_delivery(hook_user)
    delivery.attempt(d.pk)

    text = client.get("/user/webhook/deliveries").content.decode()

    assert hook_user.secret not in text
    assert json.loads(d.payload)["status_change"]["reason"] not in text
    assert "payload" not in text


def test_newest_first_and_a_cursor_pages_through_every_delivery_once(client, hook_user):
    made = [new_delivery(hook_user).pk for _ in range(5)]

    pages, after = [], None
    while True:
        page = listed(client, limit=2, **({"after": after} if after else {}))
        pages.append([item["id"] for item in page["deliveries"]])
        after = page["next_cursor"]
        if after is None:
            break

    assert pages == [made[4:2:-1], made[2:0:-1], made[:1]]


def test_each_state_filters_to_its_deliveries(client, hook_user, receiver, settings):
    pending = new_delivery(hook_user)
    delivered, given_up, retrying, held = (new_delivery(hook_user) for _ in range(4))
    receiver.answer(200, 400, 500)
    assert delivery.attempt(delivered.pk) == "succeeded"
    assert delivery.attempt(given_up.pk) == "failed"
    assert delivery.attempt(retrying.pk) == "retry"
    Endpoint.objects.filter(user=hook_user).update(disabled_at=timezone.now())
    assert delivery.attempt(held.pk) == "held"

    found = {state: [item["id"] for item in listed(client, status=state)["deliveries"]]
             for state in ("pending", "retrying", "delivered", "given_up", "held")}

    assert found == {"pending": [pending.pk], "retrying": [retrying.pk], "delivered": [delivered.pk],
                     "given_up": [given_up.pk], "held": [held.pk]}


def test_an_unknown_status_answers_422_naming_the_allowed_ones(client):
    body = answer(client.get("/user/webhook/deliveries", {"status": "failed"}), 422)

    assert body["errors"]["status"] == ["status must be one of: pending, retrying, delivered, given_up, held."]


@pytest.mark.parametrize("limit", ["0", "201", "ten", "١٢"])
def test_a_limit_outside_1_to_200_answers_422(client, limit):
    answer(client.get("/user/webhook/deliveries", {"limit": limit}), 422)


def test_a_user_never_sees_another_users_deliveries(client, hook_user, receiver):
    other = user_with_webhook(receiver)
    new_delivery(other)
    mine = new_delivery(hook_user)

    assert [item["id"] for item in listed(client)["deliveries"]] == [mine.pk]
    assert listed(client_of(other))["deliveries"][0]["id"] != mine.pk


def test_another_users_cursor_is_refused_and_shows_nothing_of_theirs(client, hook_user, receiver):
    # The attack: a cursor is a delivery id; one minted for another user must not page their rows.
    other = user_with_webhook(receiver)
    for _ in range(3):
        new_delivery(other)
    theirs = listed(client_of(other), limit=1)["next_cursor"]

    body = answer(client.get("/user/webhook/deliveries", {"after": theirs}), 422)

    assert "cursor" in body["errors"]["after"][0]


def test_a_tampered_cursor_is_refused(client, hook_user):
    for _ in range(2):
        new_delivery(hook_user)
    cursor = listed(client, limit=1)["next_cursor"]
    value, signature = cursor.split(":", 1)

    for forged in (f"{value}0:{signature}", "1:" + signature, "nonsense"):
        answer(client.get("/user/webhook/deliveries", {"after": forged}), 422)


# --- Redelivery ------------------------------------------------------------------------------------
def test_redelivering_by_id_sends_the_same_id_and_body_again(client, hook_user, receiver):
    d = new_delivery(hook_user)
    assert delivery.attempt(d.pk) == "succeeded"

    body = answer(client.post("/user/webhook/redeliver", {"ids": [d.pk]}, format="json"), 202)
    assert body == {"queued": 1, "ids": [d.pk], "created": 0, "skipped": []}
    assert fresh(d).status == "pending"
    assert delivery.attempt(d.pk) == "succeeded"

    first, again = receiver.posts()
    assert again.webhook_id == first.webhook_id == str(d.webhook_id)
    assert again.body == first.body == d.payload.encode()
    assert [item["state"] for item in listed(client)["deliveries"]] == ["delivered"]


def test_a_given_up_delivery_is_kept_and_can_be_redelivered(client, hook_user, receiver):
    receiver.answer(410)
    d = new_delivery(hook_user)
    assert delivery.attempt(d.pk) == "failed"
    assert listed(client, status="given_up")["deliveries"][0]["id"] == d.pk

    answer(client.post("/user/webhook/redeliver", {"ids": [d.pk]}, format="json"), 202)

    assert delivery.attempt(d.pk) == "succeeded"
    assert [a["http_status"] for a in listed(client)["deliveries"][0]["attempts"]] == [410, 200]


def test_redelivering_another_users_delivery_answers_404_and_changes_nothing(client, hook_user, receiver):
    other = user_with_webhook(receiver)
    theirs = new_delivery(other)
    assert delivery.attempt(theirs.pk) == "succeeded"

    body = answer(client.post("/user/webhook/redeliver", {"ids": [theirs.pk]}, format="json"), 404)

    assert str(theirs.pk) in body["detail"]
    assert fresh(theirs).status == "succeeded"


@pytest.mark.parametrize("body", [{}, {"ids": []}, {"ids": ["1"]}, {"ids": [0]}, {"ids": [1], "after": ""},
                                  {"until": "x"}, {"ids": [1], "until": "x"}, [1]])
def test_a_malformed_redelivery_request_answers_422(client, body):
    answer(client.post("/user/webhook/redeliver", body, format="json"), 422)


def test_redelivering_a_range_of_the_event_log_creates_deliveries_for_events_that_had_none(receiver):
    user = make_user()  # no webhook yet: its first events have no delivery
    meeting = new_meeting(user)
    advance_meeting(meeting, S.JOINING, S.ACTIVE)
    webhook.set_webhook(user, receiver.url)
    log = logged(user)
    assert len(log) == 3 and not WebhookDelivery.objects.filter(user=user).exists()
    after, until = (events.cursor(user.pk, e.position) for e in (log[0], log[2]))

    body = answer(client_of(user).post("/user/webhook/redeliver", {"after": after, "until": until}, format="json"), 202)

    assert (body["queued"], body["created"]) == (2, 2)
    for delivery_id in body["ids"]:
        assert delivery.attempt(delivery_id) == "succeeded"
    sent = receiver.posts()
    assert [g.webhook_id for g in sent] == [e.id for e in log[1:]]
    assert [g.body.decode() for g in sent] == [e.body for e in log[1:]]


def test_a_range_from_the_start_redelivers_existing_deliveries_under_their_ids(client, hook_user, receiver):
    meeting = new_meeting(hook_user)
    advance_meeting(meeting, S.JOINING)
    existing = list(WebhookDelivery.objects.filter(user=hook_user).order_by("pk").values_list("pk", flat=True))

    body = answer(client.post("/user/webhook/redeliver", {"after": ""}, format="json"), 202)

    assert (body["ids"], body["created"]) == (existing, 0)


def test_more_than_the_maximum_answers_422_saying_so(client, hook_user, settings):
    settings.WEBHOOK_REDELIVER_MAX = 2
    ids = [new_delivery(hook_user).pk for _ in range(3)]

    by_ids = answer(client.post("/user/webhook/redeliver", {"ids": ids}, format="json"), 422)
    by_range = answer(client.post("/user/webhook/redeliver", {"after": ""}, format="json"), 422)

    assert "at most 2" in by_ids["detail"] and "WEBHOOK_REDELIVER_MAX" in by_ids["detail"]
    assert "3 deliveries" in by_range["detail"] and "at most 2" in by_range["detail"]


def test_an_event_log_cursor_of_another_user_answers_422(client, hook_user, receiver):
    other = make_user()
    new_meeting(other)
    theirs = events.cursor(other.pk, logged(other)[0].position)

    body = answer(client.post("/user/webhook/redeliver", {"after": theirs}, format="json"), 422)

    assert "after" in body["errors"]


def test_redelivering_without_a_webhook_answers_409_saying_what_to_do(api_client):
    body = answer(api_client.post("/user/webhook/redeliver", {"after": ""}, format="json"), 409)

    assert "PUT /user/webhook" in body["detail"]


# --- Endpoint health -------------------------------------------------------------------------------
def test_the_webhook_shows_an_enabled_endpoint_its_last_success_and_never_the_secret(client, hook_user, receiver):
    d = new_delivery(hook_user)
    delivery.attempt(d.pk)

    response = client.get("/user/webhook")
    body = answer(response, 200)

    assert (body["webhook_url"], body["state"], body["disabled_at"], body["last_error"]) == (
        receiver.url, "enabled", None, None)
    assert body["last_success_at"] is not None
    assert hook_user.secret not in response.content.decode()


def test_an_endpoint_failing_for_the_configured_time_is_disabled(client, hook_user, receiver, settings):
    disable_after_failing(hook_user, receiver, settings)

    body = answer(client.get("/user/webhook"), 200)

    assert body["state"] == "disabled"
    assert body["disabled_at"] is not None
    assert (body["last_error"], body["last_success_at"]) == ("HTTP 500", None)


def test_an_endpoint_failing_for_less_than_the_configured_time_stays_enabled(client, hook_user, receiver, settings):
    settings.WEBHOOK_ENDPOINT_DISABLE_AFTER_SECONDS = 3600
    receiver.default = Answer(500)
    for _ in range(3):
        assert delivery.attempt(new_delivery(hook_user).pk) == "retry"

    assert answer(client.get("/user/webhook"), 200)["state"] == "enabled"


def test_a_success_ends_the_failing_streak(client, hook_user, receiver, settings):
    settings.WEBHOOK_ENDPOINT_DISABLE_AFTER_SECONDS = 3600
    receiver.answer(500, 200, 500)
    assert delivery.attempt(new_delivery(hook_user).pk) == "retry"
    Endpoint.objects.filter(user=hook_user).update(failing_since=timezone.now() - timedelta(hours=2))
    assert delivery.attempt(new_delivery(hook_user).pk) == "succeeded"

    assert delivery.attempt(new_delivery(hook_user).pk) == "retry"

    assert answer(client.get("/user/webhook"), 200)["state"] == "enabled"
    assert Endpoint.objects.get(user=hook_user).failing_since > timezone.now() - timedelta(minutes=1)


def test_while_disabled_deliveries_are_held_not_sent(client, hook_user, receiver, settings):
    failing = disable_after_failing(hook_user, receiver, settings)
    sent_before = len(receiver.posts())

    new = new_delivery(hook_user)
    due_now(failing)

    assert delivery.attempt(new.pk) == "held"
    assert delivery.attempt(failing.pk) == "held"
    assert len(receiver.posts()) == sent_before
    assert sorted(i["id"] for i in listed(client, status="held")["deliveries"]) == [failing.pk, new.pk]
    assert answer(client.get("/user/webhook"), 200)["held_deliveries"] == 2


def test_redelivering_to_a_disabled_endpoint_answers_409(client, hook_user, receiver, settings):
    failing = disable_after_failing(hook_user, receiver, settings)

    body = answer(client.post("/user/webhook/redeliver", {"ids": [failing.pk]}, format="json"), 409)

    assert "disabled" in body["detail"] and "PUT /user/webhook" in body["detail"]


def test_put_webhook_re_enables_the_endpoint_and_releases_the_held_deliveries(client, hook_user, receiver, settings):
    failing = disable_after_failing(hook_user, receiver, settings)
    held = new_delivery(hook_user)
    delivery.attempt(held.pk)
    receiver.default = Answer(200)

    answer(client.put("/user/webhook", {"webhook_url": receiver.url}, format="json"), 200)

    assert answer(client.get("/user/webhook"), 200)["state"] == "enabled"
    assert {fresh(failing).status, fresh(held).status} == {"pending"}
    assert delivery.attempt(held.pk) == "succeeded"


def test_an_operator_setting_the_webhook_through_the_admin_api_re_enables_it_too(hook_user, receiver, settings):
    failing = disable_after_failing(hook_user, receiver, settings)
    due_now(failing)
    assert delivery.attempt(failing.pk) == "held"
    admin = APIClient()
    admin.credentials(HTTP_X_ADMIN_API_KEY=settings.ADMIN_API_TOKEN)

    answer(admin.patch(f"/admin/users/{hook_user.pk}", {"data": {"webhook_url": receiver.url + "?v=2"}},
                       format="json"), 200)

    assert answer(client_of(hook_user).get("/user/webhook"), 200)["state"] == "enabled"
    assert fresh(failing).status == "pending"


def test_put_webhook_sends_the_held_deliveries_through_the_worker(worker, hook_user, receiver, settings):
    # Disabled at the first failure: the worker holds everything after it.
    settings.WEBHOOK_ENDPOINT_DISABLE_AFTER_SECONDS = 0
    receiver.default = Answer(500)
    client = client_of(hook_user)
    meetings = [new_meeting(hook_user) for _ in range(4)]
    wait_until(lambda: WebhookDelivery.objects.filter(user=hook_user, status="held").count() == 4,
               what="every delivery held")
    receiver.default = Answer(200)
    sent_while_enabled = len(receiver.posts())

    answer(client.put("/user/webhook", {"webhook_url": receiver.url}, format="json"), 200)

    wait_until(lambda: WebhookDelivery.objects.filter(user=hook_user, status="succeeded").count() == 4,
               what="the held deliveries delivered")
    # Before: the failures that disabled the endpoint (attempts already running then end too).
    assert sorted(g.webhook_id for g in receiver.posts()[sent_while_enabled:]) == sorted(
        str(d.webhook_id) for d in WebhookDelivery.objects.filter(meeting__in=meetings))


def test_a_replayed_range_goes_through_the_worker_under_the_per_user_cap(worker, hook_user, receiver, settings):
    settings.WEBHOOK_MAX_IN_FLIGHT_PER_USER = 2
    client = client_of(hook_user)
    meetings = [new_meeting(hook_user) for _ in range(6)]
    wait_until(lambda: len(receiver.posts()) >= 6, what="the live deliveries")
    receiver.default = Answer(200, delay=0.05)

    body = answer(client.post("/user/webhook/redeliver", {"after": ""}, format="json"), 202)

    assert body["queued"] == 6
    again = receiver.wait_posts(12)[6:]
    assert sorted(g.webhook_id for g in again) == sorted(
        str(d.webhook_id) for d in WebhookDelivery.objects.filter(meeting__in=meetings))
    assert receiver.max_in_flight <= 2


# --- Metrics ---------------------------------------------------------------------------------------
def scraped() -> dict[str, float]:
    from django.test import Client
    from prometheus_client.parser import text_string_to_metric_families

    response = Client().get("/metrics")
    assert response.status_code == 200, response.content
    return {s.name: s.value for family in text_string_to_metric_families(response.content.decode())
            for s in family.samples if not s.labels}


def test_given_up_held_and_disabled_are_gauges_alerts_can_use(hook_user, receiver, settings):
    receiver.answer(400)
    assert delivery.attempt(new_delivery(hook_user).pk) == "failed"
    disable_after_failing(hook_user, receiver, settings)
    assert delivery.attempt(new_delivery(hook_user).pk) == "held"

    samples = scraped()

    assert samples["botmanager_webhook_deliveries_given_up"] == 1
    assert samples["botmanager_webhook_deliveries_held"] == 1
    assert samples["botmanager_webhook_endpoints_disabled"] == 1
