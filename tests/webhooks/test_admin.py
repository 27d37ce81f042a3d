"""The deliveries in the Django admin: list, filters, search, the read-only detail with its
attempts, and the "Redeliver selected deliveries" action."""
from __future__ import annotations

from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone

from accounts import webhook
from tests.factories import make_user
from tests.webhooks.conftest import new_meeting
from webhooks import delivery
from webhooks.models import WebhookAttempt, WebhookDelivery

pytestmark = pytest.mark.django_db
LIST = "/admin/webhooks/webhookdelivery/"


@pytest.fixture
def console():
    client = Client()
    client.force_login(make_user(email="ops-hooks@example.com", is_staff=True, is_superuser=True))
    return client


def listed(response) -> set[int]:
    assert response.status_code == 200
    return {d.pk for d in response.context["cl"].result_list}


@pytest.fixture
def failed_and_succeeded(hook_user, receiver):
    receiver.answer(404)
    failed = WebhookDelivery.objects.get(meeting=new_meeting(hook_user))
    succeeded = WebhookDelivery.objects.get(meeting=new_meeting(hook_user))
    assert delivery.attempt(failed.pk) == "failed"
    assert delivery.attempt(succeeded.pk) == "succeeded"
    return failed, succeeded


def test_the_changelist_lists_and_filters_deliveries(console, failed_and_succeeded, hook_user):
    failed, succeeded = failed_and_succeeded

    assert listed(console.get(LIST)) >= {failed.pk, succeeded.pk}
    assert listed(console.get(LIST, {"status": "failed"})) == {failed.pk}
    assert listed(console.get(LIST, {"status": "succeeded"})) == {succeeded.pk}
    assert listed(console.get(LIST, {"last_response_code": "404"})) == {failed.pk}
    assert listed(console.get(LIST, {"event": "meeting.completed"})) == set()
    assert listed(console.get(LIST, {"q": hook_user.email})) == {failed.pk, succeeded.pk}
    assert listed(console.get(LIST, {"q": str(failed.webhook_id)})) == {failed.pk}


def test_the_change_page_shows_the_payload_and_the_attempts_read_only(console, failed_and_succeeded, hook_user):
    failed, _ = failed_and_succeeded

    response = console.get(f"{LIST}{failed.pk}/change/")

    page = response.content.decode()
    assert response.status_code == 200
    assert "meeting.status_change" in page and str(failed.webhook_id) in page
    assert "404" in page
    assert hook_user.secret not in page
    assert console.get(f"{LIST}add/").status_code == 403
    assert console.post(f"{LIST}{failed.pk}/delete/", {"post": "yes"}).status_code == 403
    assert WebhookDelivery.objects.filter(pk=failed.pk).exists()


def test_redeliver_sends_a_failed_delivery_again_with_the_same_id_and_a_fresh_window(
        console, failed_and_succeeded, receiver, django_capture_on_commit_callbacks):
    failed, _ = failed_and_succeeded
    old_window = failed.give_up_at
    WebhookDelivery.objects.filter(pk=failed.pk).update(give_up_at=timezone.now() - timedelta(hours=1))

    with django_capture_on_commit_callbacks() as callbacks:  # enqueues the task (no worker here)
        response = console.post(LIST, {"action": "redeliver_selected", "_selected_action": [failed.pk]},
                                follow=True)

    assert "Redelivering 1 delivery." in response.content.decode()
    assert len(callbacks) == 1
    failed.refresh_from_db()
    assert failed.status == "pending"
    assert failed.give_up_at > old_window
    assert failed.attempts_before_window == failed.attempts == 1
    assert delivery.attempt(failed.pk) == "succeeded"
    first, second = receiver.posts()[0], receiver.posts()[-1]
    assert first.webhook_id == second.webhook_id == str(failed.webhook_id)
    assert second.headers["X-Webhook-Attempt"] == "2"
    assert list(WebhookAttempt.objects.filter(delivery=failed).values_list("number", "outcome")) == [
        (1, "failed"), (2, "succeeded")]


def test_redeliver_leaves_a_running_attempt_alone(console, hook_user):
    d = WebhookDelivery.objects.get(meeting=new_meeting(hook_user))
    WebhookDelivery.objects.filter(pk=d.pk).update(claimed_until=timezone.now() + timedelta(seconds=30),
                                                   next_attempt_at=timezone.now() + timedelta(seconds=30))

    response = console.post(LIST, {"action": "redeliver_selected", "_selected_action": [d.pk]}, follow=True)

    assert "1 had an attempt running" in response.content.decode()
    assert WebhookDelivery.objects.get(pk=d.pk).next_attempt_at > timezone.now() + timedelta(seconds=20)


def test_the_endpoints_are_listed_read_only(console, hook_user, receiver, settings):
    from webhooks.models import Endpoint

    settings.WEBHOOK_ENDPOINT_FAILURE_THRESHOLD = 2
    receiver.down()
    for _ in range(2):
        delivery.attempt(WebhookDelivery.objects.get(meeting=new_meeting(hook_user)).pk)
    state = Endpoint.objects.get(url=receiver.url)
    endpoints = "/admin/webhooks/endpoint/"

    response = console.get(endpoints)

    assert response.status_code == 200
    assert {e.pk for e in response.context["cl"].result_list} == {state.pk}
    page = response.content.decode()
    assert receiver.url in page and "refused" in page.lower() and hook_user.email in page
    assert console.get(f"{endpoints}?q={hook_user.email}").context["cl"].result_count == 1
    assert console.get(f"{endpoints}{state.pk}/change/").status_code == 200  # viewed, not edited
    assert console.post(f"{endpoints}{state.pk}/change/", {"consecutive_failures": "0"}).status_code == 403
    assert console.get(f"{endpoints}add/").status_code == 403
    assert console.post(f"{endpoints}{state.pk}/delete/", {"post": "yes"}).status_code == 403
    assert Endpoint.objects.get(pk=state.pk).consecutive_failures == 2


def test_a_users_page_links_to_their_deliveries_and_endpoint_health(console, hook_user, receiver):
    mine = WebhookDelivery.objects.get(meeting=new_meeting(hook_user))
    other = make_user()
    webhook.set_webhook(other, receiver.url)
    other.refresh_from_db()
    new_meeting(other)

    page = console.get(f"/admin/accounts/user/{hook_user.pk}/change/").content.decode()
    link = f"{LIST}?user__id__exact={hook_user.pk}"

    assert link in page
    assert listed(console.get(link)) == {mine.pk}
    assert f"/admin/webhooks/endpoint/?user__id__exact={hook_user.pk}" in page


def test_the_endpoint_list_shows_a_disabled_endpoint_and_links_its_deliveries(console, hook_user, receiver, settings):
    settings.WEBHOOK_ENDPOINT_DISABLE_AFTER_SECONDS = 0
    receiver.answer(500)
    assert delivery.attempt(WebhookDelivery.objects.get(meeting=new_meeting(hook_user)).pk) == "retry"

    page = console.get("/admin/webhooks/endpoint/?state=disabled").content.decode()

    assert "disabled since" in page
    assert f"{LIST}?user__id__exact={hook_user.pk}" in page


def test_the_endpoint_list_filters_by_state_in_words(console, hook_user, receiver, settings):
    settings.WEBHOOK_ENDPOINT_DISABLE_AFTER_SECONDS = 0
    receiver.answer(500)
    assert delivery.attempt(WebhookDelivery.objects.get(meeting=new_meeting(hook_user)).pk) == "retry"

    page = console.get("/admin/webhooks/endpoint/").content.decode()
    enabled = console.get("/admin/webhooks/endpoint/?state=enabled").context["cl"].result_list

    assert "By state" in page and "disabled at" not in page.lower()
    assert [e for e in enabled if e.user_id == hook_user.pk] == []


def test_the_delivery_list_is_a_record_to_view_not_to_change(console, failed_and_succeeded):
    page = console.get(LIST).content.decode()

    assert "Select webhook delivery to view" in page
    assert "to change" not in page


def test_a_viewer_sees_deliveries_without_the_redeliver_action(failed_and_succeeded):
    from django.contrib.auth.models import Permission

    viewer = make_user(email="viewer-hooks@example.com", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_webhookdelivery"))
    client = Client()
    client.force_login(viewer)

    response = client.get(LIST)

    assert response.status_code == 200
    assert "redeliver_selected" not in response.content.decode()
