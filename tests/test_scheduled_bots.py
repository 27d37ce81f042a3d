"""Scheduled bots (`POST /bots` with `join_at`): validation, the visible `scheduled` state, the
launch by the scheduler's periodic pass from the database, cancel, seats, duplicates, the sweep,
and the events. Real PostgreSQL and Redis; the broker's queues are read to see what was enqueued.
The restarts of real worker and beat processes are in test_scheduled_restarts.py."""
from __future__ import annotations

import json
import sys
import time
from datetime import datetime, timedelta, timezone as dt_timezone

import pytest
from django.utils import timezone

from meetings.bot_protocol.channels import status_channel
from meetings.launching import scheduled
from meetings.lifecycle.statuses import MeetingStatus
from meetings.models import Meeting, MeetingSession, MeetingTransition
from meetings.stopping import reconcile
from orchestrators import registry
from tests.factories import make_meeting, make_user
from tests.http import answer
from tests.support import all_queues, broker_client, concurrently, lose_queued_tasks, queued, queued_tasks
from webhooks.models import WebhookDelivery

pytestmark = pytest.mark.django_db(transaction=True)

MEET_ID = "abc-defg-hij"
LEAD = 30.0


@pytest.fixture(autouse=True)
def knobs(settings, tmp_path):
    """The process backend in a temp RUN_DIR (its bots dir shows every start), a known lead time
    and launch window, and a broker emptied around every test."""
    settings.ORCHESTRATOR = "process"
    settings.RUN_DIR = tmp_path
    settings.PROCESS_BOT_COMMAND = f"{sys.executable} -c 'import time; time.sleep(60)'"
    settings.SCHEDULED_LAUNCH_LEAD_SECONDS = LEAD
    settings.SCHEDULED_LAUNCH_WINDOW_SECONDS = 600
    registry.get_orchestrator.cache_clear()

    def purge():
        broker_client().delete(*all_queues(), "unacked", "unacked_index")

    purge()
    yield
    purge()
    backend = registry.get_orchestrator()
    for bot in backend.list():
        if bot.status.is_running:
            backend.kill(bot.container_id)
    registry.get_orchestrator.cache_clear()


def iso(moment: datetime) -> str:
    return moment.astimezone(dt_timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def in_(seconds: float) -> datetime:
    return timezone.now() + timedelta(seconds=seconds)


def schedule(client, join_at: datetime | str, native: str = MEET_ID, status: int = 201) -> dict:
    join_at = join_at if isinstance(join_at, str) else iso(join_at)
    return answer(client.post("/bots", {"platform": "google_meet", "native_meeting_id": native,
                                        "join_at": join_at}, format="json"), status)


def launches() -> list[dict]:
    return queued_tasks("meetings.launch_bot")


def bots_started() -> int:
    """Bots the process backend was ever asked to start (running or not)."""
    return len(registry.get_orchestrator().list())


# --- Validation -----------------------------------------------------------------------------------
def _naive_future() -> str:
    return (timezone.now() + timedelta(hours=1)).replace(tzinfo=None).isoformat()


INVALID = {
    "past": lambda: iso(timezone.now() - timedelta(minutes=1)),
    "now-ish past (one second ago)": lambda: iso(timezone.now() - timedelta(seconds=1)),
    "naive (no time zone)": _naive_future,
    "a date without a time": lambda: (timezone.now() + timedelta(days=2)).date().isoformat(),
    "more than 30 days ahead": lambda: iso(timezone.now() + timedelta(days=30, minutes=5)),
    "not a date": lambda: "tomorrow at nine",
    "a number": lambda: 1767225600,
    "an object": lambda: {"at": "2030-01-01T00:00:00Z"},
}


@pytest.mark.parametrize("form", list(INVALID))
def test_an_invalid_join_at_answers_422_with_a_detail_and_creates_no_meeting(api_client, api_user, form):
    body = answer(api_client.post("/bots", {"platform": "google_meet", "native_meeting_id": MEET_ID,
                                            "join_at": INVALID[form]()}, format="json"), 422)

    assert "join_at" in body["errors"]
    assert body["detail"].startswith("Invalid request: ")
    assert not Meeting.objects.filter(user=api_user).exists()
    assert launches() == []


@pytest.mark.parametrize("form,expect", [("naive (no time zone)", "no time zone"), ("past", "not in the future"),
                                         ("more than 30 days ahead", "at most 30 days")])
def test_the_422_says_what_is_wrong_with_join_at(api_client, form, expect):
    body = answer(api_client.post("/bots", {"platform": "google_meet", "native_meeting_id": MEET_ID,
                                            "join_at": INVALID[form]()}, format="json"), 422)

    assert expect in body["detail"]


def test_a_join_at_with_another_offset_names_the_same_instant_and_is_stored_in_utc(api_client):
    target = (timezone.now() + timedelta(hours=3)).replace(microsecond=0)
    with_offset = target.astimezone(dt_timezone(timedelta(hours=2))).isoformat()  # "...+02:00"

    body = schedule(api_client, with_offset)

    assert Meeting.objects.get(pk=body["id"]).join_at == target
    assert body["data"]["join_at"] == target.strftime("%Y-%m-%dT%H:%M:%SZ")


@pytest.mark.parametrize("body_extra", [{}, {"join_at": None}], ids=["absent", "null"])
def test_without_join_at_the_bot_is_requested_and_launched_now_as_before(api_client, body_extra):
    body = answer(api_client.post("/bots", {"platform": "google_meet", "native_meeting_id": MEET_ID, **body_extra},
                                  format="json"), 201)

    assert body["status"] == "requested"
    assert "join_at" not in body["data"]
    assert [t["args"] for t in launches()] == [[body["id"]]]


# --- The scheduled state --------------------------------------------------------------------------
def test_a_scheduled_bot_is_created_scheduled_with_no_launch(api_client):
    join_at = in_(3600)

    body = schedule(api_client, join_at)

    assert body["status"] == "scheduled"
    assert body["bot_container_id"] is None
    meeting = Meeting.objects.get(pk=body["id"])
    assert meeting.join_at == join_at
    assert meeting.deadline_at == join_at + timedelta(seconds=600)  # the launch window
    assert launches() == []
    assert not MeetingSession.objects.filter(meeting=meeting).exists()
    [record] = MeetingTransition.objects.filter(meeting=meeting)
    assert (record.from_status, record.to_status, record.source) == ("", "scheduled", "user")


def test_a_scheduled_bot_shows_its_launch_window_as_its_public_deadline(api_client):
    join_at = in_(3600)

    body = schedule(api_client, join_at)

    assert datetime.fromisoformat(body["deadline_at"]) == join_at + timedelta(seconds=600)
    assert body["deadline_action"] == "fail: not launched within the launch window"


def test_get_meetings_shows_the_scheduled_bot_with_its_join_at(api_client):
    join_at = in_(3600)
    created = schedule(api_client, join_at)

    listed = answer(api_client.get("/meetings"), 200)["meetings"]
    detail = answer(api_client.get(f"/meetings/{created['id']}"), 200)

    assert [(m["id"], m["status"]) for m in listed] == [(created["id"], "scheduled")]
    assert listed[0]["data"]["join_at"].endswith("Z")
    assert datetime.fromisoformat(listed[0]["data"]["join_at"]) == join_at
    assert detail["transitions"][0]["to"] == "scheduled"


def test_bots_status_lists_the_scheduled_bot_without_a_container(api_client):
    created = schedule(api_client, in_(3600))

    [bot] = answer(api_client.get("/bots/status"), 200)["running_bots"]

    assert set(bot) == {"container_id", "container_name", "platform", "native_meeting_id", "status",
                        "normalized_status", "created_at", "labels", "meeting_id_from_name"}
    assert bot["container_id"] is None
    assert (bot["status"], bot["normalized_status"]) == ("scheduled", "Scheduled")
    assert (bot["platform"], bot["native_meeting_id"]) == ("google_meet", MEET_ID)
    assert bot["meeting_id_from_name"] == str(created["id"])


def test_the_scheduled_status_is_published_and_recorded_for_the_webhook(api_client, api_user, redis_conn):
    api_user.webhook_url = "https://hooks.example.com/bm"
    api_user.save()
    # The meeting id is not known before the request: listen on every meeting's status channel.
    pubsub = redis_conn.pubsub()
    pubsub.psubscribe(status_channel(0).replace(":0:", ":*:"))
    assert pubsub.get_message(timeout=2)["type"] == "psubscribe"

    created = schedule(api_client, in_(3600))

    # Other test processes on this Redis server publish their meetings' statuses too (pub/sub
    # ignores the database number): this meeting's message is the one on its channel.
    message, deadline = None, time.monotonic() + 5
    while message is None and time.monotonic() < deadline:
        got = pubsub.get_message(timeout=1)
        if got and got["channel"] == status_channel(created["id"]):
            message = got
    pubsub.close()

    [delivery] = WebhookDelivery.objects.filter(meeting_id=created["id"])
    payload = json.loads(delivery.payload)
    assert payload["event"] == "meeting.status_change"
    assert payload["status_change"]["from"] is None and payload["status_change"]["to"] == "scheduled"
    assert payload["meeting"]["status"] == "scheduled"
    assert message is not None, "no status message on the meeting's channel"
    assert json.loads(message["data"])["payload"]["status"] == "scheduled"


# --- Launch by the periodic pass ------------------------------------------------------------------
def test_the_scheduler_leaves_a_bot_alone_until_join_at_less_the_lead(api_client):
    join_at = in_(3600)
    created = schedule(api_client, join_at)

    summary = scheduled.launch_due(join_at - timedelta(seconds=LEAD + 1))

    assert summary.launched == 0
    assert Meeting.objects.get(pk=created["id"]).status == "scheduled"
    assert launches() == []


def test_the_scheduler_claims_a_due_bot_and_enqueues_its_launch_once(api_client):
    join_at = in_(3600)
    created = schedule(api_client, join_at)
    at = join_at - timedelta(seconds=LEAD)

    first = scheduled.launch_due(at)
    again = scheduled.launch_due(at + timedelta(seconds=1))

    assert (first.launched, again.launched) == (1, 0)
    meeting = Meeting.objects.get(pk=created["id"])
    assert meeting.status == "requested"
    assert [t["args"] for t in launches()] == [[created["id"]]]
    claim = MeetingTransition.objects.filter(meeting=meeting).last()
    assert (claim.from_status, claim.to_status, claim.source) == ("scheduled", "requested", "launch")


def test_a_launched_scheduled_bot_starts_on_the_backend(api_client):
    from meetings import tasks

    created = schedule(api_client, in_(LEAD / 2))  # already within the lead time
    scheduled.launch_due()
    [launch] = launches()

    tasks.launch_bot(*launch["args"])

    meeting = Meeting.objects.get(pk=created["id"])
    assert meeting.bot_container_id
    assert bots_started() == 1


def test_concurrent_scheduler_passes_launch_a_meeting_once(api_client):
    created = schedule(api_client, in_(LEAD / 2))

    outcomes = concurrently(lambda: scheduled.claim(created["id"], created["user_id"], timezone.now()), 4)

    assert sorted(outcomes) == ["launched", "not_due", "not_due", "not_due"]
    assert [t["args"] for t in launches()] == [[created["id"]]]
    applied = MeetingTransition.objects.filter(meeting_id=created["id"], to_status="requested", applied=True)
    assert applied.count() == 1


def test_a_claimed_meeting_whose_launch_was_lost_is_relaunched_by_the_sweep(api_client, settings):
    settings.ORPHAN_GRACE_SECONDS = 60
    created = schedule(api_client, in_(LEAD / 2))
    scheduled.launch_due()
    lose_queued_tasks()  # the worker died between the claim's commit and the launch
    Meeting.objects.filter(pk=created["id"]).update(updated_at=timezone.now() - timedelta(minutes=5))

    _plan, summary = reconcile.sweep()

    assert summary.relaunched == 1
    assert [t["args"] for t in launches()] == [[created["id"]]]


# --- Cancel ---------------------------------------------------------------------------------------
def test_cancelling_a_scheduled_bot_ends_it_with_no_launch_and_no_backend_call(api_client):
    join_at = in_(LEAD / 2)
    created = schedule(api_client, join_at)

    body = answer(api_client.delete(f"/bots/google_meet/{MEET_ID}"), 202)
    scheduled.launch_due(join_at)  # its time comes: nothing to launch

    meeting = Meeting.objects.get(pk=created["id"])
    assert body["message"]
    assert (meeting.status, meeting.completion_reason) == ("completed", "stopped")
    ending = MeetingTransition.objects.filter(meeting=meeting).last()
    assert (ending.from_status, ending.to_status) == ("scheduled", "completed")
    assert "cancelled before its scheduled launch" in ending.reason
    orchestrator_work = [m["task"] for m in queued() if m["task"] in (
        "meetings.launch_bot", "meetings.terminate_bot", "meetings.kill_bot", "meetings.delayed_stop")]
    assert orchestrator_work == []
    assert bots_started() == 0


def test_a_cancel_racing_the_claim_leaves_nothing_to_launch(api_client):
    from meetings import tasks

    created = schedule(api_client, in_(LEAD / 2))
    scheduled.launch_due()  # claimed; its launch is queued but has not run

    answer(api_client.delete(f"/bots/google_meet/{MEET_ID}"), 202)
    for launch in launches():
        tasks.launch_bot(*launch["args"])

    assert Meeting.objects.get(pk=created["id"]).status == "completed"
    assert bots_started() == 0


# --- Seats and duplicates -------------------------------------------------------------------------
def test_a_scheduled_bot_takes_no_seat_before_its_launch(api_client, api_user):
    api_user.max_concurrent_bots = 1
    api_user.save()
    schedule(api_client, in_(3600))

    now = answer(api_client.post("/bots", {"platform": "google_meet", "native_meeting_id": "xyz-wxyz-xyz"},
                                 format="json"), 201)

    assert now["status"] == "requested"


def test_a_bot_can_be_scheduled_while_the_user_is_at_the_limit(api_client, api_user):
    api_user.max_concurrent_bots = 1
    api_user.save()
    make_meeting(api_user, status=MeetingStatus.ACTIVE, native_meeting_id="xyz-wxyz-xyz")

    assert schedule(api_client, in_(3600))["status"] == "scheduled"


def test_a_launched_scheduled_bot_takes_a_seat(api_client, api_user):
    api_user.max_concurrent_bots = 1
    api_user.save()
    schedule(api_client, in_(LEAD / 2))
    scheduled.launch_due()

    body = answer(api_client.post("/bots", {"platform": "google_meet", "native_meeting_id": "xyz-wxyz-xyz"},
                                  format="json"), 403)

    assert body == {"detail": "User has reached the maximum concurrent bot limit (1)."}


def test_at_the_limit_a_due_bot_waits_scheduled_and_launches_when_a_seat_frees(api_client, api_user):
    api_user.max_concurrent_bots = 1
    api_user.save()
    busy = make_meeting(api_user, status=MeetingStatus.ACTIVE, native_meeting_id="xyz-wxyz-xyz")
    created = schedule(api_client, in_(LEAD / 2))

    waiting = scheduled.launch_due()
    Meeting.objects.filter(pk=busy.pk).update(status=MeetingStatus.COMPLETED)  # its meeting ended
    freed = scheduled.launch_due()

    assert (waiting.launched, waiting.waiting_for_seat) == (0, 1)
    assert freed.launched == 1
    assert Meeting.objects.get(pk=created["id"]).status == "requested"


# --- Fair share across users -----------------------------------------------------------------------
def due_backlog(user, count: int, join_at: datetime) -> list[int]:
    """`count` scheduled meetings of `user`, all due (test setup: rows written directly)."""
    from tests.factories import meet_id

    deadline = join_at + timedelta(seconds=600)
    rows = Meeting.objects.bulk_create(
        Meeting(user=user, platform="google_meet", native_meeting_id=meet_id(10_000 + n), status="scheduled",
                join_at=join_at - timedelta(microseconds=count - n), deadline_at=deadline, data={})
        for n in range(count))
    return [m.pk for m in rows]


def test_one_users_backlog_at_their_seat_limit_does_not_delay_another_users_launch(api_client, api_user):
    """The attack: A (limit 1, its seat taken) has 600 due scheduled bots, all due before B's one."""
    a = make_user(max_concurrent_bots=1)
    make_meeting(a, status=MeetingStatus.ACTIVE, native_meeting_id="zzz-zzzz-zzz")
    due_backlog(a, 600, in_(LEAD / 4))
    created = schedule(api_client, in_(LEAD / 2))  # B (api_user): due after every one of A's

    summary = scheduled.launch_due()

    assert Meeting.objects.get(pk=created["id"]).status == "requested"
    assert [t["args"] for t in launches()] == [[created["id"]]]
    assert (summary.launched, summary.waiting_for_seat) == (1, 600)
    assert Meeting.objects.filter(user=a, status="scheduled").count() == 600


def test_one_users_backlog_without_a_limit_does_not_delay_another_users_launch(api_client, api_user):
    """A (no limit) has more due bots than a pass takes: B's one still goes in the first pass,
    and A's take the rest of it."""
    a = make_user(max_concurrent_bots=0)
    due_backlog(a, scheduled.BATCH + 100, in_(LEAD / 4))
    created = schedule(api_client, in_(LEAD / 2))

    summary = scheduled.launch_due()

    assert Meeting.objects.get(pk=created["id"]).status == "requested"
    assert summary.launched == scheduled.BATCH
    assert Meeting.objects.filter(user=a, status="requested").count() == scheduled.BATCH - 1


def test_a_pass_claims_at_most_a_users_free_seats_earliest_join_at_first(api_client, api_user):
    a = make_user(max_concurrent_bots=3)
    make_meeting(a, status=MeetingStatus.ACTIVE, native_meeting_id="zzz-zzzz-zzz")
    backlog = due_backlog(a, 5, in_(LEAD / 4))  # ordered by join_at

    summary = scheduled.launch_due()

    assert (summary.launched, summary.waiting_for_seat) == (2, 3)
    assert set(Meeting.objects.filter(user=a, status="requested").values_list("pk", flat=True)) == set(backlog[:2])


@pytest.mark.parametrize("second_join_at", [None, 7200], ids=["now", "scheduled"])
def test_a_second_request_for_a_scheduled_meeting_answers_409(api_client, api_user, second_join_at):
    schedule(api_client, in_(3600))
    body = {"platform": "google_meet", "native_meeting_id": MEET_ID}
    if second_join_at:
        body["join_at"] = iso(in_(second_join_at))

    answered = answer(api_client.post("/bots", body, format="json"), 409)

    assert MEET_ID in answered["detail"]
    assert Meeting.objects.filter(user=api_user).count() == 1


def test_scheduling_a_meeting_that_already_has_a_live_bot_answers_409(api_client, api_user):
    make_meeting(api_user, status=MeetingStatus.ACTIVE, native_meeting_id=MEET_ID)

    schedule(api_client, in_(3600), status=409)


def test_the_database_refuses_a_second_scheduled_meeting_for_the_same_id(api_user):
    from django.db import IntegrityError

    from meetings.lifecycle import transitions as lifecycle

    lifecycle.create_meeting(user=api_user, platform="google_meet", native_meeting_id=MEET_ID, data={},
                             source="user", join_at=in_(3600))
    with pytest.raises(IntegrityError):
        lifecycle.create_meeting(user=api_user, platform="google_meet", native_meeting_id=MEET_ID, data={},
                                 source="user", join_at=in_(7200))


# --- The sweep ------------------------------------------------------------------------------------
def test_the_sweep_leaves_a_scheduled_meeting_alone_before_its_window_ends(api_client):
    created = schedule(api_client, in_(3600))
    # Scheduled long ago and never touched since: still not stuck.
    Meeting.objects.filter(pk=created["id"]).update(updated_at=timezone.now() - timedelta(days=3))

    _plan, summary = reconcile.sweep()

    assert summary.finalized == 0 and summary.relaunched == 0
    assert Meeting.objects.get(pk=created["id"]).status == "scheduled"


def test_the_sweep_does_not_load_scheduled_meetings_before_their_deadline(api_client):
    # Bots scheduled days ahead (thousands, for a busy user) are nothing a sweep can act on yet.
    schedule(api_client, in_(3600))  # waiting for its join_at
    overdue = schedule(api_client, in_(3600), native="xyz-abcd-efg")
    Meeting.objects.filter(pk=overdue["id"]).update(deadline_at=timezone.now() - timedelta(seconds=1))

    snapshot = reconcile.snapshot_meetings(timezone.now())

    assert [m.id for m in snapshot] == [overdue["id"]]


def test_the_sweep_fails_a_scheduled_meeting_never_launched_by_the_end_of_its_window(api_client, api_user):
    created = schedule(api_client, in_(3600))
    # Its window ended (the user stayed at the limit, or the scheduler was down): test setup.
    Meeting.objects.filter(pk=created["id"]).update(deadline_at=timezone.now() - timedelta(seconds=1))

    _plan, summary = reconcile.sweep()
    late = scheduled.launch_due(timezone.now() + timedelta(days=1))

    meeting = Meeting.objects.get(pk=created["id"])
    assert summary.finalized == 1 and late.launched == 0
    assert (meeting.status, meeting.failure_stage) == ("failed", "scheduled")
    assert "not launched within 600s after its join_at" in meeting.data["last_error"]
    assert launches() == []
