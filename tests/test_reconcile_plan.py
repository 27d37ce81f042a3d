"""The sweep's decisions, as a pure function of a snapshot (no database, no backend)."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

from meetings.stopping.reconcile import Finalize, Listing, MeetingRow, StartStop, plan
from orchestrators.base import LABEL_MEETING_ID, BotInfo, NormalizedStatus

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=timezone.utc)
GRACE = timedelta(seconds=60)
OLD = NOW - timedelta(minutes=10)
FUTURE = NOW + timedelta(minutes=10)
PAST = NOW - timedelta(seconds=1)


HERE = "process:host-a:/run/bots"  # the instance this sweep lists
THERE = "process:host-b:/run/bots"  # another host's instance


def row(id=1, status="active", deadline=FUTURE, updated=OLD, container="c1", backend="process", stop_reason=None,
        instance=HERE):
    return MeetingRow(id, status, deadline, updated, container, backend, stop_reason, instance)


def bot(container_id="c1", meeting_id=1, status=NormalizedStatus.UP, exit_code=None):
    return BotInfo(container_id, f"bot-{container_id}", status, status.value.lower(),
                   {LABEL_MEETING_ID: str(meeting_id)}, None, exit_code)


def listing(*bots, backend="process", instance=HERE):
    return {backend: Listing(backend, tuple(bots), instance=instance)}


def failed_listing(backend="process"):
    return {backend: Listing(backend, None, "engine down", HERE)}


def decide(meetings, listings, statuses=None, pending=()):
    return plan(meetings, listings, statuses or {}, list(pending), NOW, GRACE)


def only_finalize(p) -> Finalize:
    assert len(p.finalize) == 1, p
    return p.finalize[0]


def test_live_meeting_with_running_bot_is_left_alone():
    p = decide([row()], listing(bot()), {1: "active"})
    assert (p.finalize, p.start_stop, p.containers) == ([], [], [])


def test_stopping_past_deadline_is_completed_and_its_container_stopped():
    f = only_finalize(decide([row(status="stopping", deadline=PAST)], listing(bot()), {1: "stopping"}))
    assert (f.to_status, f.completion_reason, f.stop_container) == ("completed", "stopped", ("process", "c1", HERE))
    assert f.from_status == "stopping"


def test_stopping_past_deadline_keeps_the_requested_completion_reason():
    f = only_finalize(decide([row(status="stopping", deadline=PAST, stop_reason="max_duration")], listing(bot())))
    assert f.completion_reason == "max_duration"


def test_requested_past_deadline_fails_at_requested():
    f = only_finalize(decide([row(status="requested", deadline=PAST, container=None)], listing()))
    assert (f.to_status, f.failure_stage) == ("failed", "requested")


def test_joining_past_deadline_fails_at_joining():
    f = only_finalize(decide([row(status="joining", deadline=PAST)], listing(bot())))
    assert (f.to_status, f.failure_stage) == ("failed", "joining")


def test_awaiting_admission_past_deadline_completes_with_timeout():
    f = only_finalize(decide([row(status="awaiting_admission", deadline=PAST)], listing(bot())))
    assert (f.to_status, f.completion_reason) == ("completed", "awaiting_admission_timeout")


def test_active_past_max_duration_starts_the_stop_flow():
    p = decide([row(status="active", deadline=PAST)], listing(bot()), {1: "active"})
    assert p.start_stop == [StartStop(1, "max_duration")]
    assert p.finalize == []


def test_deadlines_apply_even_when_the_backend_cannot_be_listed():
    p = decide([row(status="stopping", deadline=PAST)], failed_listing())
    assert only_finalize(p).to_status == "completed"
    assert p.unknown_backends == {"process": "engine down"}


def test_active_meeting_whose_container_is_gone_fails_at_active():
    f = only_finalize(decide([row()], listing()))
    assert (f.to_status, f.failure_stage, f.metadata) == ("failed", "active", {"container": "gone"})


def test_exited_container_failure_carries_the_exit_code():
    f = only_finalize(decide([row()], listing(bot(status=NormalizedStatus.EXITED, exit_code=3)), {1: "active"}))
    assert f.metadata["exit_code"] == 3
    assert "exit code 3" in f.data_updates["last_error"]  # data.last_error: the user sees why
    assert f.failure_stage == "active"


def test_stopping_meeting_whose_container_is_gone_completes_stopped():
    f = only_finalize(decide([row(status="stopping")], listing()))
    assert (f.to_status, f.completion_reason) == ("completed", "stopped")


def test_a_failed_listing_judges_nothing_gone():
    p = decide([row()], failed_listing())
    assert (p.finalize, p.containers) == ([], [])


def test_a_recently_updated_meeting_gets_the_orphan_grace():
    p = decide([row(updated=NOW - timedelta(seconds=5))], listing())
    assert p.finalize == []


def test_meeting_of_another_backend_is_not_judged_from_this_backends_listing():
    p = decide([row(backend="docker")], listing())
    assert p.finalize == []


def test_requested_meeting_without_container_is_not_finalized_before_its_deadline():
    p = decide([row(status="requested", container=None)], listing())
    assert p.finalize == []


def test_container_of_a_terminal_meeting_is_stopped():
    p = decide([], listing(bot(meeting_id=7)), {7: "completed"})
    assert [(c.container_id, c.running) for c in p.containers] == [("c1", True)]


def test_container_of_an_unknown_meeting_is_stopped():
    p = decide([], listing(bot(meeting_id=99)), {})
    assert [c.reason for c in p.containers] == ["meeting unknown"]


def test_exited_container_of_a_terminal_meeting_is_removed_without_a_stop():
    p = decide([], listing(bot(status=NormalizedStatus.EXITED, meeting_id=7)), {7: "failed"})
    assert [(c.container_id, c.running) for c in p.containers] == [("c1", False)]


def test_a_live_meetings_bot_is_never_stopped():
    p = decide([row(id=5, container="other")], listing(bot(container_id="c9", meeting_id=5)), {5: "active"})
    assert p.containers == []


def test_post_meeting_retries_are_carried_into_the_plan():
    assert decide([], listing(), pending=[3, 4]).post_meeting == [3, 4]


def test_requested_meeting_without_bot_past_the_grace_is_relaunched():
    p = decide([row(status="requested", container=None)], listing())
    assert p.relaunch == [1]


def test_a_recent_request_is_not_relaunched():
    p = decide([row(status="requested", container=None, updated=NOW - timedelta(seconds=5))], listing())
    assert p.relaunch == []


def test_nothing_is_relaunched_when_a_backend_could_not_be_listed():
    p = decide([row(status="requested", container=None)], failed_listing())
    assert p.relaunch == []


def test_a_request_past_its_deadline_fails_instead_of_relaunching():
    p = decide([row(status="requested", container=None, deadline=PAST)], listing())
    assert p.relaunch == []
    assert only_finalize(p).failure_stage == "requested"


def test_a_listed_unrecorded_bot_is_adopted_not_relaunched():
    bot_of_request = BotInfo("c7", "bot-c7", NormalizedStatus.UP, "running",
                             {LABEL_MEETING_ID: "1", "botmanager.session_uid": "u-1"})
    p = decide([row(status="requested", container=None)], listing(bot_of_request), {1: "requested"})
    assert [a.container_id for a in p.adopt] == ["c7"]
    assert p.relaunch == []


# --- Instances: a sweep judges only what it listed ---------------------------------------------------
def test_a_bot_of_another_instance_is_never_judged_gone_by_this_listing():
    p = decide([row(instance=THERE)], listing())  # not in this listing: it runs on another host
    assert (p.finalize, p.containers) == ([], [])


def test_a_bot_recorded_without_an_instance_is_not_judged_gone():
    p = decide([row(instance="")], listing())
    assert p.finalize == []


def test_the_deadline_of_a_meeting_on_another_instance_still_applies_and_names_its_instance():
    f = only_finalize(decide([row(status="stopping", deadline=PAST, instance=THERE)], listing()))
    assert (f.to_status, f.stop_container) == ("completed", ("process", "c1", THERE))


def test_an_instance_sweep_judges_its_bots_but_enforces_no_deadline():
    # Meeting 1 is past its stop deadline but its bot runs; meeting 2's bot is gone.
    p = plan([row(id=1, status="stopping", deadline=PAST), row(id=2, container="c2")], listing(bot("c1")),
             {1: "stopping"}, [], NOW, GRACE, deadlines=False)
    assert [(f.meeting_id, f.reason) for f in p.finalize] == [(2, "bot container is gone while active")]
    assert p.relaunch == []


def test_orphan_containers_are_stopped_on_the_instance_that_listed_them():
    p = decide([], listing(bot("c9", meeting_id=9)), {})
    assert [(c.container_id, c.instance) for c in p.containers] == [("c9", HERE)]
