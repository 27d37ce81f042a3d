"""The Django admin (operations console) at /admin/, mounted after the admin API routes."""
from __future__ import annotations

import re

import pytest
from django.test import Client
from django.utils import timezone

from accounts.models import APIToken
from accounts.services import user_for_token
from meetings.lifecycle import transitions as lifecycle
from meetings.lifecycle.statuses import MeetingStatus, TransitionSource
from meetings.models import Meeting
from tests.factories import make_meeting, make_session, make_token, make_user

pytestmark = pytest.mark.django_db

PASSWORD = "correct horse battery staple"


@pytest.fixture
def console():
    """A client logged in as a superuser."""
    client = Client()
    client.force_login(make_user(email="ops@example.com", is_staff=True, is_superuser=True))
    return client


def listed(response) -> list:
    return list(response.context["cl"].result_list)


# --- Logging in ------------------------------------------------------------------------------------
def test_a_superuser_logs_in_with_email_and_password_and_sees_the_index():
    make_user(email="root@example.com", password=PASSWORD, is_staff=True, is_superuser=True)
    client = Client()

    login = client.post("/admin/login/", {"username": "root@example.com", "password": PASSWORD,
                                          "next": "/admin/"})
    index = client.get("/admin/")

    assert login.status_code == 302
    assert login["Location"] == "/admin/"
    assert index.status_code == 200
    assert b"Meetings" in index.content
    assert b"Users" in index.content


def test_a_wrong_password_does_not_log_in():
    make_user(email="root@example.com", password=PASSWORD, is_staff=True, is_superuser=True)
    client = Client()

    login = client.post("/admin/login/", {"username": "root@example.com", "password": "wrong"})

    assert login.status_code == 200
    assert b"Please enter the correct email and password" in login.content
    assert client.get("/admin/").status_code == 302


def test_a_user_who_is_not_staff_cannot_log_in():
    make_user(email="plain@example.com", password=PASSWORD)
    client = Client()

    client.post("/admin/login/", {"username": "plain@example.com", "password": PASSWORD})

    response = client.get("/admin/")
    assert response.status_code == 302
    assert response["Location"].startswith("/admin/login/")


def test_an_anonymous_visitor_is_sent_to_the_login_page():
    response = Client().get("/admin/meetings/meeting/")

    assert response.status_code == 302
    assert response["Location"].startswith("/admin/login/")


# --- Changelists -----------------------------------------------------------------------------------
def test_the_users_changelist_lists_users(console):
    user = make_user(email="listed@example.com")

    response = console.get("/admin/accounts/user/")

    assert response.status_code == 200
    assert user in listed(response)
    assert b"listed@example.com" in response.content


def test_the_tokens_changelist_shows_prefixes_and_never_a_hash_or_the_token(console):
    user = make_user()
    token = make_token(user)
    record = APIToken.objects.get(user=user)

    response = console.get("/admin/accounts/apitoken/")

    assert response.status_code == 200
    assert record in listed(response)
    assert record.prefix.encode() in response.content
    assert record.token_hash.encode() not in response.content
    assert token.encode() not in response.content


def test_the_meetings_changelist_lists_meetings(console):
    meeting = make_meeting(native_meeting_id="abc-defg-hij")

    response = console.get("/admin/meetings/meeting/")

    assert response.status_code == 200
    assert meeting in listed(response)
    assert b"abc-defg-hij" in response.content


def test_the_meetings_changelist_filters_by_status(console):
    active = make_meeting(status=MeetingStatus.ACTIVE)
    make_meeting(status=MeetingStatus.REQUESTED)
    make_meeting(status=MeetingStatus.COMPLETED)

    response = console.get("/admin/meetings/meeting/", {"status": "active"})

    assert response.status_code == 200
    assert listed(response) == [active]


def test_the_meetings_changelist_filters_by_platform(console):
    zoom = make_meeting(platform="zoom", native_meeting_id="123456789")
    make_meeting(platform="google_meet")
    make_meeting(platform="teams", native_meeting_id="1234567890")

    response = console.get("/admin/meetings/meeting/", {"platform": "zoom"})

    assert response.status_code == 200
    assert listed(response) == [zoom]


def test_the_meetings_changelist_searches_by_meeting_id_and_by_user_email(console):
    alice = make_user(email="alice-search@example.com")
    by_id = make_meeting(native_meeting_id="qqq-wwww-eee")
    by_email = make_meeting(user=alice)
    make_meeting()

    found_by_id = console.get("/admin/meetings/meeting/", {"q": "qqq-wwww"})
    found_by_email = console.get("/admin/meetings/meeting/", {"q": "alice-search"})

    assert listed(found_by_id) == [by_id]
    assert listed(found_by_email) == [by_email]


def test_the_transitions_changelist_lists_transitions(console):
    meeting = make_meeting()
    lifecycle.transition(meeting.id, MeetingStatus.JOINING, source=TransitionSource.BOT_CALLBACK,
                         reason="bot says joining")

    response = console.get("/admin/meetings/meetingtransition/")

    assert response.status_code == 200
    assert {(t.meeting_id, t.to_status) for t in listed(response)} == {
        (meeting.id, "requested"), (meeting.id, "joining")}


def test_the_sessions_changelist_lists_sessions(console):
    session = make_session(make_meeting())

    response = console.get("/admin/meetings/meetingsession/")

    assert response.status_code == 200
    assert listed(response) == [session]
    assert str(session.session_uid).encode() in response.content


# --- The meeting change page -----------------------------------------------------------------------
def _meeting_with_history() -> Meeting:
    meeting = make_meeting()
    lifecycle.transition(meeting.id, MeetingStatus.JOINING, source=TransitionSource.BOT_CALLBACK,
                         reason="bot is joining")
    lifecycle.transition(meeting.id, MeetingStatus.ACTIVE, source=TransitionSource.BOT_CALLBACK,
                         reason="bot admitted")
    lifecycle.transition(meeting.id, MeetingStatus.REQUESTED, source=TransitionSource.BOT_CALLBACK,
                         reason="late requested callback")  # refused, recorded
    meeting.refresh_from_db()
    return meeting


def test_the_meeting_change_page_shows_its_transitions_inline_read_only(console):
    meeting = _meeting_with_history()

    response = console.get(f"/admin/meetings/meeting/{meeting.id}/change/")

    assert response.status_code == 200
    [transitions] = [f for f in response.context["inline_admin_formsets"]
                     if f.opts.model._meta.model_name == "meetingtransition"]
    assert len(list(transitions)) == 4
    assert not transitions.has_add_permission
    assert not transitions.has_change_permission
    assert not transitions.formset.can_delete
    html = response.content.decode()
    for reason in ("bot requested", "bot is joining", "bot admitted", "late requested callback"):
        assert reason in html
    assert not re.search(r'name="transitions-\d+-(reason|to_status|from_status|applied|DELETE)"', html)


def test_the_meeting_status_is_read_only_in_the_change_form(console):
    meeting = make_meeting(status=MeetingStatus.ACTIVE)

    response = console.get(f"/admin/meetings/meeting/{meeting.id}/change/")

    form = response.context["adminform"].form
    assert "status" not in form.fields
    assert 'name="status"' not in response.content.decode()
    assert "active" in response.content.decode()


def test_posting_the_change_form_of_a_meeting_is_refused_and_changes_nothing(console):
    meeting = make_meeting(status=MeetingStatus.ACTIVE, data={"notes": "old"})

    response = console.post(f"/admin/meetings/meeting/{meeting.id}/change/",
                            {"data": '{"notes": "new"}', "status": "completed", "stop_reason": "stopped"})

    assert response.status_code == 403
    meeting.refresh_from_db()
    assert meeting.data == {"notes": "old"}
    assert meeting.status == MeetingStatus.ACTIVE
    assert meeting.stop_reason is None


def test_the_meeting_page_shows_data_and_stop_reason_but_offers_no_field_and_no_save(console):
    meeting = make_meeting(status=MeetingStatus.STOPPING, data={"notes": "kept"}, stop_reason="max_duration")

    response = console.get(f"/admin/meetings/meeting/{meeting.id}/change/")

    html = response.content.decode()
    assert response.status_code == 200
    assert response.context["adminform"].form.fields == {}
    assert "kept" in html and "Max Duration" in html
    assert not re.search(r'name="(data|stop_reason|status|_save|_continue)"', html)


def test_meetings_cannot_be_added_or_deleted_in_the_admin(console):
    meeting = make_meeting()

    add = console.get("/admin/meetings/meeting/add/")
    delete = console.post(f"/admin/meetings/meeting/{meeting.id}/delete/", {"post": "yes"})
    bulk = console.post("/admin/meetings/meeting/", {"action": "delete_selected", "_selected_action": [meeting.id],
                                                     "post": "yes"})

    assert add.status_code == 403
    assert delete.status_code == 403
    assert bulk.status_code == 302  # the action is not offered: "no action selected", back to the list
    assert Meeting.objects.filter(pk=meeting.pk).exists()


def test_sessions_are_read_only_in_the_admin(console):
    session = make_session(make_meeting())

    add = console.get("/admin/meetings/meetingsession/add/")
    change = console.post(f"/admin/meetings/meetingsession/{session.id}/change/", {"exit_code": "3"})
    delete = console.post(f"/admin/meetings/meetingsession/{session.id}/delete/", {"post": "yes"})

    assert (add.status_code, change.status_code, delete.status_code) == (403, 403, 403)
    session.refresh_from_db()
    assert session.exit_code is None


def test_transition_and_meeting_times_show_seconds(console):
    meeting = make_meeting()
    at = timezone.now().replace(hour=9, minute=41, second=7, microsecond=0)
    Meeting.objects.filter(pk=meeting.pk).update(created_at=at)
    meeting.transitions.update(created_at=at)

    transitions = console.get("/admin/meetings/meetingtransition/").content.decode()
    meetings = console.get("/admin/meetings/meeting/").content.decode()
    page = console.get(f"/admin/meetings/meeting/{meeting.id}/change/").content.decode()

    shown = at.strftime("%Y-%m-%d 09:41:07")
    assert shown in transitions
    assert shown in meetings
    assert page.count(shown) >= 2  # the meeting's creation and its transition inline


def test_the_transitions_list_shows_the_time_before_the_wide_columns(console):
    make_meeting()

    columns = list(console.get("/admin/meetings/meetingtransition/").context["cl"].list_display)

    assert columns.index("created_at") < columns.index("meeting")


def test_transitions_cannot_be_added_changed_or_deleted_in_the_admin(console):
    meeting = make_meeting()
    record = meeting.transitions.get()

    add = console.get("/admin/meetings/meetingtransition/add/")
    delete = console.post(f"/admin/meetings/meetingtransition/{record.id}/delete/", {"post": "yes"})
    change = console.post(f"/admin/meetings/meetingtransition/{record.id}/change/", {"reason": "rewritten"})

    assert add.status_code == 403
    assert delete.status_code == 403
    assert change.status_code == 403
    record.refresh_from_db()
    assert record.reason == "bot requested"


# --- Users and tokens pages ------------------------------------------------------------------------
def test_the_user_change_page_shows_the_users_tokens_by_prefix(console):
    user = make_user()
    make_token(user)
    record = user.api_tokens.get()

    response = console.get(f"/admin/accounts/user/{user.id}/change/")

    assert response.status_code == 200
    assert record.prefix.encode() in response.content
    assert record.token_hash.encode() not in response.content


def test_a_token_cannot_be_created_in_the_django_admin_without_its_value(console):
    """Tokens are issued by the admin API or `manage.py create_token`, which show the value once; an
    admin-made row would have no usable token (an empty hash) or no user."""
    user = make_user()

    add_page = console.get("/admin/accounts/apitoken/add/")
    user_page = console.get(f"/admin/accounts/user/{user.id}/change/")

    assert add_page.status_code == 403
    [tokens] = [f for f in user_page.context["inline_admin_formsets"]
                if f.opts.model._meta.model_name == "apitoken"]
    assert not tokens.has_add_permission


def test_a_token_can_be_revoked_in_the_django_admin(console):
    user = make_user()
    token = make_token(user)
    record = user.api_tokens.get()

    response = console.post(f"/admin/accounts/apitoken/{record.id}/change/",
                            {"revoked_at_0": "2026-01-02", "revoked_at_1": "03:04:05"})

    assert response.status_code == 302
    record.refresh_from_db()
    assert record.revoked_at is not None
    assert user_for_token(token) is None


def test_a_second_user_whose_email_differs_only_by_case_is_refused_in_the_admin(console):
    make_user(email="case@example.com")

    response = console.post("/admin/accounts/user/add/", {
        "email": "CASE@example.com", "name": "", "image_url": "", "max_concurrent_bots": "1",
        "data": "{}", "is_active": "on", "api_tokens-TOTAL_FORMS": "0", "api_tokens-INITIAL_FORMS": "0"})

    assert response.status_code == 200
    assert "A user with this email already exists." in response.content.decode()


def test_user_change_page_never_shows_the_webhook_secret(admin_client_logged_in_for_secret):
    client, user = admin_client_logged_in_for_secret
    page = client.get(f"/admin/accounts/user/{user.pk}/change/")
    assert page.status_code == 200
    assert "https://hooks.example.com/x" in page.content.decode()
    assert "s3cr3t-webhook-value" not in page.content.decode()


@pytest.fixture
def admin_client_logged_in_for_secret(db, client):
    from accounts.models import User

    admin = User.objects.create_superuser("root-secret@example.com", "pw-123456")
    client.force_login(admin)
    user = User.objects.create_user("hooked@example.com",
                                    data={"webhook_url": "https://hooks.example.com/x",
                                          "webhook_secret": "s3cr3t-webhook-value"})
    return client, user


def test_admin_static_files_are_served_without_debug(client, settings):
    settings.DEBUG = False
    response = client.get("/static/admin/css/base.css")
    assert response.status_code == 200
    assert b"".join(response.streaming_content if response.streaming else [response.content])
