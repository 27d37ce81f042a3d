"""The chaos suite's checks catch what they claim to (synthetic run data, no service): a suite
that cannot fail proves nothing."""
from __future__ import annotations

from collections import Counter
from datetime import datetime, timezone

import pytest

from tests.chaos import harness

pytestmark = pytest.mark.chaos

T0 = 1_800_000_000.0


def at(seconds: float) -> datetime:
    return datetime.fromtimestamp(T0 + seconds, tz=timezone.utc)


def step(t, frm, to, source, applied=True, session=1, **extra) -> dict:
    return {"from_status": frm, "to_status": to, "source": source, "applied": applied, "created_at": at(t),
            "session_id": None if source == "user" else session, "reason": "", "metadata": {},
            "completion_reason": extra.get("completion_reason"), "failure_stage": extra.get("failure_stage")}


COOPERATIVE = [
    step(0, "", "requested", "user"),
    step(1, "requested", "joining", "bot_callback"),
    step(1.2, "joining", "awaiting_admission", "bot_callback"),
    step(1.4, "awaiting_admission", "active", "bot_callback"),
    step(5, "active", "stopping", "user"),
    step(5.1, "stopping", "completed", "bot_callback"),
]


def run_data(history, *, scenario="cooperative", stop="after_active", status="completed", reason="stopped",
             end=5.1, runs=1, bot_seen=5.0, events=None, done=True) -> harness.RunData:
    plan = harness.MeetingPlan(index=0, scenario=scenario, platform="teams", native_id="1000000000", stop=stop,
                               stop_jitter=0.5, post_at=0.0, meeting_id=7, posted_at=T0)
    meeting = {"id": 7, "status": status, "completion_reason": reason if status == "completed" else None,
               "failure_stage": reason if status == "failed" else None, "start_time": at(1.4),
               "end_time": at(end) if status in ("completed", "failed") else None,
               "post_meeting_done_at": at(end + 0.1) if done else None, "bot_container_id": "proc-0123456789ab",
               "stop_requested_at": None, "data": {}}
    return harness.RunData(
        plans=[plan], meetings={7: meeting}, transitions={7: history}, post_meeting_runs=Counter({7: runs}),
        bot_events={7: events or []}, bot_last_seen={7: T0 + bot_seen}, leftovers=[], kill=harness.KillInfo(), adopted=0,
        lost_tasks=Counter(), started_at=T0, posts_done_at=T0 + 1, ended_at=T0 + 200,
        timings=harness.Timings(), errors=[])


def failures(data) -> list[str]:
    results, run_failures = harness.verify(data)
    return results[0].failures + run_failures


def test_a_clean_cooperative_history_passes():
    assert failures(run_data(COOPERATIVE)) == []


def test_a_transition_outside_the_table_fails():
    history = COOPERATIVE[:4] + [step(3, "active", "joining", "bot_callback"),
                                 step(4, "joining", "completed", "bot_callback")]
    assert any("active -> joining is not allowed" in f for f in failures(run_data(history, end=4)))


def test_a_transition_that_does_not_start_where_the_previous_ended_fails():
    history = COOPERATIVE[:3] + [step(2, "requested", "active", "bot_callback")] + COOPERATIVE[4:]
    assert any("does not start where the previous ended" in f for f in failures(run_data(history)))


def test_a_meeting_left_stopping_past_its_bound_fails():
    history = COOPERATIVE[:5] + [step(200, "stopping", "completed", "grace_finalizer")]
    assert any("stayed stopping" in f for f in failures(run_data(history, end=200, bot_seen=6)))


def test_a_meeting_still_live_at_the_end_fails():
    found = failures(run_data(COOPERATIVE[:5], status="stopping", done=False))
    assert "not terminal: stopping" in found
    assert any("stayed stopping" in f for f in found)
    assert any("never ran" in f for f in found)


def test_an_active_meeting_whose_bot_died_must_end_within_the_orphan_bound():
    history = COOPERATIVE[:4] + [step(100, "active", "failed", "orphan_sweep", failure_stage="active")]
    data = run_data(history, scenario="die_active", stop="none", status="failed", reason="active", end=100,
                    bot_seen=3, events=[{"event": "exit", "t": T0 + 3, "code": 3}])
    assert any("stayed active" in f for f in failures(data))
    # A live bot's meeting may stay active up to the maximum duration (and its stop flow).
    history = COOPERATIVE[:4] + [step(40, "active", "stopping", "user"),
                                 step(40.2, "stopping", "completed", "bot_callback")]
    assert failures(run_data(history, end=40.2, bot_seen=40.1)) == []
    history = COOPERATIVE[:4] + [step(100, "active", "stopping", "user"),
                                 step(100.2, "stopping", "completed", "bot_callback")]
    assert any("stayed active" in f for f in failures(run_data(history, end=100.2, bot_seen=100.1)))


def test_post_meeting_work_must_run_exactly_once():
    assert "post-meeting work ran 2 times" in failures(run_data(COOPERATIVE, runs=2))
    assert "post-meeting work ran 0 times" in failures(run_data(COOPERATIVE, runs=0))


def test_a_bot_outliving_its_meeting_past_the_bound_fails():
    assert any("still ran" in f for f in failures(run_data(COOPERATIVE, bot_seen=100)))


def test_the_final_status_must_match_the_scenario():
    history = COOPERATIVE[:4] + [step(9, "active", "completed", "bot_callback", completion_reason="stopped")]
    found = failures(run_data(history, scenario="die_active", stop="none", end=9, bot_seen=8))
    assert any("expected failed/active" in f for f in found)
    assert any("expected orphan_sweep" in f for f in found)
    # Scenarios that only end when stopped must have been stopped.
    assert any("without a stop" in f for f in failures(run_data(history, end=9, bot_seen=8)))
    # A stop that applied means completed/stopped, whatever the scenario.
    stuck = COOPERATIVE[:2] + [step(3, "joining", "failed", "orphan_sweep", failure_stage="joining")]
    found = failures(run_data(COOPERATIVE, scenario="stuck_joining", stop="after_post"))
    assert found == []
    assert failures(run_data(stuck, scenario="stuck_joining", stop="none", status="failed", reason="joining",
                             end=3, bot_seen=2.9)) == []


def test_a_bot_that_never_reports_its_exit_cannot_end_the_meeting_by_callback():
    assert any("never does" in f for f in failures(run_data(COOPERATIVE, scenario="ignore_leave")))


def test_an_older_session_moving_the_meeting_after_a_newer_one_reported_fails():
    history = COOPERATIVE[:4] + [
        step(3, "active", "joining", "bot_callback", applied=False, session=2),  # the restarted bot
        step(5, "active", "stopping", "user"),
        step(5.1, "stopping", "completed", "bot_callback", session=1),
    ]
    assert any("older than session 2" in f for f in failures(run_data(history, scenario="restart_new_session",
                                                                       stop="after_restart")))


def test_bots_left_running_fail_the_run():
    data = run_data(COOPERATIVE)
    data.leftovers.append("pid 1: bot of meeting 7")
    assert any("left running" in f for f in failures(data))


def test_the_first_stop_decides_the_reason_user_stopped_or_sweep_max_duration():
    overstayed = COOPERATIVE[:4] + [step(22, "active", "stopping", "orphan_sweep"),
                                    step(22.1, "stopping", "completed", "bot_callback",
                                         completion_reason="max_duration")]
    assert failures(run_data(overstayed, scenario="overstay", stop="none", reason="max_duration", end=22.1,
                             bot_seen=22)) == []
    # Outside `overstay`, reaching the maximum duration means nothing else ended the meeting.
    assert any("reached the maximum bot duration" in f
               for f in failures(run_data(overstayed, reason="max_duration", end=22.1, bot_seen=22)))
    # A bare "stopped" would be wrong.
    found = failures(run_data(overstayed, scenario="overstay", stop="none", reason="stopped", end=22.1,
                              bot_seen=22))
    assert any("expected completed/max_duration" in f for f in found)
