"""The operations console: "Finalize selected meetings" (intermediate form, then the lifecycle
with source admin) and "Run orphan sweep now" (with or without a selection)."""
from __future__ import annotations

import json
from datetime import timedelta

import psycopg2
import pytest
from django.db import connection
from django.utils import timezone

from meetings.bot_protocol.channels import meeting_channel
from meetings.lifecycle.statuses import MeetingStatus, TransitionSource
from meetings.models import Meeting, MeetingTransition
from meetings.stopping import reconcile
from tests.factories import make_meeting
from tests.stop.conftest import admin_action, admin_finalize, run_bot_stops, snapshot

S = MeetingStatus
pytestmark = pytest.mark.django_db
ADMIN = "ops@example.com"


def messages_of(response) -> list[str]:
    return [m.message for m in response.context["messages"]]


def last_applied(meeting_id: int) -> MeetingTransition:
    return MeetingTransition.objects.filter(meeting_id=meeting_id, applied=True).order_by("id").last()


def without_history(row: dict) -> dict:
    return {k: v for k, v in row.items() if k != "transitions"}


# --- Finalize selected meetings ----------------------------------------------------------------------
def test_finalize_first_shows_the_intermediate_form_and_changes_nothing(console):
    meetings = [make_meeting(status=S.ACTIVE), make_meeting(status=S.STOPPING)]
    before = [snapshot(m.id) for m in meetings]

    response = admin_action(console, "finalize_selected", [m.id for m in meetings])

    assert response.status_code == 200
    assert "admin/meetings/finalize.html" in [t.name for t in response.templates]
    form = response.context["form"]
    assert {value for value, _label in form.fields["outcome"].choices} == {
        "completed", "failed:scheduled", "failed:requested", "failed:joining", "failed:awaiting_admission", "failed:active",
        "failed:stopping"}
    assert {m.id for m in response.context["meetings"]} == {m.id for m in meetings}
    assert [snapshot(m.id) for m in meetings] == before


def test_finalize_completed_ends_the_meetings_completed_stopped_through_the_lifecycle(console):
    meetings = [make_meeting(status=S.ACTIVE), make_meeting(status=S.STOPPING)]

    response = admin_finalize(console, [m.id for m in meetings], "completed")

    assert "Finalized 2 meeting(s); 0 were already ended." in messages_of(response)
    for m in meetings:
        m.refresh_from_db()
        assert (m.status, m.completion_reason, m.failure_stage) == (S.COMPLETED, "stopped", None)
        assert m.end_time is not None
        last = last_applied(m.id)
        assert (last.to_status, last.source) == (S.COMPLETED, TransitionSource.ADMIN)
        # Who finalized it is the operator's to know (the admin shows the metadata), not the tenant's.
        assert last.metadata == {"admin_user": ADMIN}
        assert ADMIN not in last.reason


@pytest.mark.parametrize("stage", ["requested", "joining", "awaiting_admission", "active", "stopping"])
def test_finalize_failed_ends_the_meetings_failed_at_the_chosen_stage(console, stage):
    meeting = make_meeting(status=S.ACTIVE)

    admin_finalize(console, [meeting.id], f"failed:{stage}")

    meeting.refresh_from_db()
    assert (meeting.status, meeting.failure_stage, meeting.completion_reason) == (S.FAILED, stage, None)
    last = last_applied(meeting.id)
    assert (last.from_status, last.source, last.failure_stage) == (S.ACTIVE, TransitionSource.ADMIN, stage)
    assert last.metadata == {"admin_user": ADMIN}


def test_finalize_leaves_meetings_that_already_ended_untouched(console):
    completed = make_meeting(status=S.COMPLETED, completion_reason="left_alone", end_time=timezone.now())
    failed = make_meeting(status=S.FAILED, failure_stage="joining", end_time=timezone.now())
    live = make_meeting(status=S.ACTIVE)
    before = {m.id: snapshot(m.id) for m in (completed, failed)}

    response = admin_finalize(console, [completed.id, failed.id, live.id], "failed:active")

    assert "Finalized 1 meeting(s); 2 were already ended." in messages_of(response)
    for m in (completed, failed):
        after = snapshot(m.id)
        assert without_history(after) == without_history(before[m.id])
        assert [t for t in after["transitions"] if t[4]] == [t for t in before[m.id]["transitions"] if t[4]]
    assert Meeting.objects.get(pk=live.id).status == S.FAILED


def test_finalize_with_an_unknown_outcome_shows_the_form_again_and_changes_nothing(console):
    meeting = make_meeting(status=S.ACTIVE)
    before = snapshot(meeting.id)

    response = admin_finalize(console, [meeting.id], "failed:nowhere")

    assert "admin/meetings/finalize.html" in [t.name for t in response.templates]
    assert response.context["form"].errors
    assert snapshot(meeting.id) == before


def test_finalize_tells_the_bot_to_leave(console, redis_conn, django_capture_on_commit_callbacks):
    meeting = make_meeting(status=S.ACTIVE)
    pubsub = redis_conn.pubsub()
    pubsub.subscribe(meeting_channel(meeting.id))
    assert pubsub.get_message(timeout=2)["type"] == "subscribe"

    with django_capture_on_commit_callbacks(execute=True):
        admin_finalize(console, [meeting.id], "completed")

    message = pubsub.get_message(timeout=2)
    pubsub.close()
    assert message is not None and message["type"] == "message"
    assert json.loads(message["data"])["action"] == "leave"


def test_the_bot_of_a_meeting_finalized_by_hand_is_stopped_by_the_next_sweep(console, bots):
    meeting = make_meeting(status=S.ACTIVE)
    container = bots.start(meeting)  # it does not hear the leave command

    admin_finalize(console, [meeting.id], "completed")
    assert bots.running(container)
    reconcile.sweep()
    run_bot_stops()  # the stop it handed to the orchestrator queue

    assert bots.info(container) is None


# --- Run orphan sweep now -------------------------------------------------------------------------------
def test_run_orphan_sweep_without_a_selection_runs_the_sweep_and_reports_its_summary(console, bots):
    overdue = make_meeting(status=S.STOPPING, deadline_at=timezone.now() - timedelta(seconds=1))
    make_meeting(status=S.ACTIVE, deadline_at=timezone.now() + timedelta(hours=1))

    response = admin_action(console, "run_orphan_sweep")

    assert response.status_code == 200
    [message] = messages_of(response)
    assert message == ("Orphan sweep: Checked 2 live meeting(s): ended 1 meeting(s) past their deadline or whose "
                       "bot was gone.")
    assert Meeting.objects.get(pk=overdue.id).status == S.COMPLETED


def test_run_orphan_sweep_reports_nothing_to_do_in_words(console, bots):
    make_meeting(status=S.ACTIVE, deadline_at=timezone.now() + timedelta(hours=1))

    response = admin_action(console, "run_orphan_sweep")

    [message] = response.context["messages"]
    assert message.level_tag == "success"
    assert message.message == "Orphan sweep: Checked 1 live meeting(s): nothing to do."


def test_the_sweep_is_described_in_words_with_what_it_did_its_unseen_instances_and_errors(settings):
    settings.INSTANCE_UNSEEN_SECONDS = 300
    summary = reconcile.Summary(checked=7, finalized=2, containers_stopped=1, unseen_instances={"docker:a": 3},
                                errors=["docker: listing failed: timeout"])

    assert reconcile.describe_sweep(summary) == (
        "Checked 7 live meeting(s): ended 2 meeting(s) past their deadline or whose bot was gone; stopped 1 bot(s) "
        "of ended or unknown meetings. Not listed for 300 s, left to the lost-instance action: docker:a (3 live "
        "meeting(s)). 1 error(s): docker: listing failed: timeout.")


def test_run_orphan_sweep_runs_even_when_there_is_no_meeting_at_all(console, bots):
    leftover = bots.start_orphan(987_654_321)  # a bot left over after the database was emptied
    assert not Meeting.objects.exists()

    response = admin_action(console, "run_orphan_sweep")

    [message] = messages_of(response)
    assert message == "Orphan sweep: Checked 0 live meeting(s): stopped 1 bot(s) of ended or unknown meetings."
    run_bot_stops()
    assert bots.info(leftover) is None


def test_run_orphan_sweep_reports_a_sweep_that_is_already_running(console, bots):
    overdue = make_meeting(status=S.STOPPING, deadline_at=timezone.now() - timedelta(seconds=1))
    other = psycopg2.connect(**connection.get_connection_params())
    other.autocommit = True
    try:
        with other.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_lock(%s)", [reconcile.SWEEP_LOCK_KEY])
        response = admin_action(console, "run_orphan_sweep")
    finally:
        other.close()

    [message] = response.context["messages"]
    assert message.level_tag == "warning"
    assert message.message == "Orphan sweep: Another sweep was running, so this one did nothing; try again in a moment."
    assert Meeting.objects.get(pk=overdue.id).status == S.STOPPING


def test_run_orphan_sweep_is_refused_to_staff_without_access_to_meetings(bots):
    from django.test import Client

    from tests.factories import make_user

    overdue = make_meeting(status=S.STOPPING, deadline_at=timezone.now() - timedelta(seconds=1))
    client = Client()
    client.force_login(make_user(email="intern@example.com", is_staff=True))

    response = admin_action(client, "run_orphan_sweep")

    assert response.status_code == 403
    assert Meeting.objects.get(pk=overdue.id).status == S.STOPPING


@pytest.fixture
def viewer():
    """A staff member who may look at meetings but not change them."""
    from django.contrib.auth.models import Permission
    from django.test import Client

    from tests.factories import make_user

    user = make_user(email="viewer@example.com", is_staff=True)
    user.user_permissions.add(Permission.objects.get(codename="view_meeting"))
    client = Client()
    client.force_login(user)
    return client


def test_finalize_is_not_offered_to_staff_who_may_only_view_meetings(viewer):
    meeting = make_meeting(status=S.ACTIVE)
    before = snapshot(meeting.id)

    admin_finalize(viewer, [meeting.id], "completed")

    assert snapshot(meeting.id) == before


def test_run_orphan_sweep_is_not_offered_to_staff_who_may_only_view_meetings(viewer, bots):
    overdue = make_meeting(status=S.STOPPING, deadline_at=timezone.now() - timedelta(seconds=1))

    admin_action(viewer, "run_orphan_sweep")

    assert Meeting.objects.get(pk=overdue.id).status == S.STOPPING
