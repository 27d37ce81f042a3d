"""What a status's deadline means is defined once (meetings/lifecycle/deadlines.py): its length,
what the sweep does when it passes, what the API shows and the words of the ending all follow
from the same row."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone as tz

import pytest

from meetings.lifecycle import deadlines, endings
from meetings.lifecycle.statuses import NON_TERMINAL, MeetingStatus as S
from meetings.stopping.reconcile import Finalize, MeetingRow, StartStop, plan

NOW = datetime(2026, 12, 6, 12, 0, tzinfo=tz.utc)


def test_every_live_status_has_a_deadline_and_no_terminal_one_has():
    assert set(deadlines.DEADLINES) == NON_TERMINAL


@pytest.mark.parametrize("status", sorted(set(deadlines.DEADLINES) - {S.SCHEDULED}))
def test_a_length_changed_in_settings_changes_the_deadline_and_the_endings_words_together(status, settings):
    for name in deadlines.DEADLINES[status].settings:
        setattr(settings, name, 617)
    length = 617 * len(deadlines.DEADLINES[status].settings)

    assert deadlines.deadline_for(status, NOW) == NOW + timedelta(seconds=length)
    [words] = endings.deadline_passed(status).values()
    assert f"{length} s" in words


def test_a_scheduled_meetings_deadline_and_ending_count_the_launch_window_from_join_at(settings):
    settings.SCHEDULED_LAUNCH_WINDOW_SECONDS = 617

    assert deadlines.scheduled_deadline(NOW) == NOW + timedelta(seconds=617)
    assert deadlines.deadline_for(S.SCHEDULED, NOW) is None
    assert "617s after its join_at" in endings.deadline_passed(S.SCHEDULED)["last_error"]


@pytest.mark.parametrize("status", sorted(deadlines.DEADLINES))
def test_the_sweep_ends_a_meeting_past_its_deadline_as_its_row_says(status):
    row = MeetingRow(1, status, NOW - timedelta(seconds=1), NOW - timedelta(hours=1), None, "", "left_alone", "")
    deadline = deadlines.DEADLINES[status]

    [decision] = (lambda p: p.finalize + p.start_stop)(plan([row], {}, {}, [], NOW, timedelta(seconds=60)))

    if deadline.act == deadlines.STOP:
        assert decision == StartStop(1, deadline.outcome)
        return
    assert isinstance(decision, Finalize)
    assert (decision.to_status, decision.reason, decision.data_updates) == (
        deadline.to_status, deadline.reason, endings.deadline_passed(status))
    assert decision.failure_stage == (status if decision.to_status == S.FAILED else None)
    # A failure says why in last_error; a completion in completion_detail, beside its reason.
    if decision.to_status == S.FAILED:
        assert list(decision.data_updates) == ["last_error"] and decision.completion_reason is None
    else:
        assert list(decision.data_updates) == ["completion_detail"]
        assert decision.completion_reason == ("left_alone" if status == S.STOPPING else deadline.outcome)


def test_a_bots_lifetime_bound_is_every_deadline_of_a_launched_meeting_and_then_some(settings):
    # What a backend may have the engine enforce on its own (kubernetes: activeDeadlineSeconds).
    settings.REQUESTED_TIMEOUT_SECONDS, settings.JOINING_TIMEOUT_SECONDS = 300, 600
    settings.AWAITING_ADMISSION_TIMEOUT_SECONDS, settings.MAX_BOT_DURATION_SECONDS = 900, 14_400
    settings.BOT_STOP_DELAY_SECONDS, settings.BOT_STOP_GRACE_SECONDS, settings.BOT_STOP_TIMEOUT_SECONDS = 30, 10, 10
    settings.ORPHAN_SWEEP_INTERVAL_SECONDS = 60
    assert deadlines.bot_lifetime_bound() == 300 + 600 + 900 + 14_400 + (30 + 10) + 10 + 5 * 60
