"""The lifecycle core: the transition table, terminal immutability, no-ops, records, side effects,
and real concurrency on PostgreSQL."""
from __future__ import annotations

import itertools
import json
import threading
import uuid

import pytest
from django.db import connection, connections
from django.db.transaction import TransactionManagementError
from django.test.utils import CaptureQueriesContext

from meetings.bot_protocol.channels import status_channel
from meetings.lifecycle import transitions as lifecycle
from meetings.lifecycle.statuses import TERMINAL, TRANSITIONS, MeetingStatus, TransitionSource
from meetings.lifecycle.transitions import Outcome
from meetings.models import Meeting, MeetingTransition
from meetings.stopping import flow as stopping
from tests.factories import make_meeting, make_session

ALL = [s.value for s in MeetingStatus]
USER = TransitionSource.USER


def _expected(from_status: str, to_status: str) -> Outcome:
    if from_status == to_status:
        return Outcome.NOOP
    if to_status in TRANSITIONS[from_status]:
        return Outcome.APPLIED
    return Outcome.REFUSED


@pytest.mark.django_db
@pytest.mark.parametrize("from_status,to_status", list(itertools.product(ALL, ALL)))
def test_every_pair_of_the_transition_table(from_status, to_status):
    meeting = make_meeting(status=from_status)
    before = MeetingTransition.objects.filter(meeting=meeting).count()

    result = lifecycle.transition(meeting.id, to_status, source=USER, reason="table test")

    meeting.refresh_from_db()
    expected = _expected(from_status, to_status)
    assert result.outcome is expected
    records = MeetingTransition.objects.filter(meeting=meeting).order_by("id")
    if expected is Outcome.APPLIED:
        assert meeting.status == to_status
        last = records.last()
        assert (last.from_status, last.to_status, last.applied) == (from_status, to_status, True)
    elif expected is Outcome.NOOP:
        assert meeting.status == from_status
        assert records.count() == before
    else:
        assert meeting.status == from_status
        last = records.last()
        assert (last.from_status, last.to_status, last.applied) == (from_status, to_status, False)
        assert last.metadata["refused"]


def test_the_table_allows_joining_to_active_and_nothing_out_of_terminal():
    assert MeetingStatus.ACTIVE in TRANSITIONS[MeetingStatus.JOINING]
    for terminal in TERMINAL:
        assert TRANSITIONS[terminal] == frozenset()


@pytest.mark.django_db
@pytest.mark.parametrize("terminal", [MeetingStatus.COMPLETED, MeetingStatus.FAILED])
def test_terminal_meetings_never_change(terminal):
    meeting = make_meeting(status=terminal, completion_reason="stopped")
    for target in ALL:
        lifecycle.transition(meeting.id, target, source=TransitionSource.ORPHAN_SWEEP,
                             completion_reason="timeout", failure_stage="active")
    meeting.refresh_from_db()
    assert meeting.status == terminal
    assert meeting.completion_reason == "stopped"


@pytest.mark.django_db
def test_repeat_of_current_status_is_a_noop_without_record_or_event(redis_conn):
    meeting = make_meeting(status=MeetingStatus.ACTIVE)
    pubsub = redis_conn.pubsub()
    pubsub.subscribe(status_channel(meeting.id))
    pubsub.get_message(timeout=1)  # subscription confirmation
    count = MeetingTransition.objects.count()

    result = lifecycle.transition(meeting.id, MeetingStatus.ACTIVE, source=TransitionSource.BOT_CALLBACK)

    assert result.outcome is Outcome.NOOP
    assert MeetingTransition.objects.count() == count
    assert pubsub.get_message(timeout=0.3) is None
    pubsub.close()


@pytest.mark.django_db(transaction=True)
def test_applied_transition_publishes_status_event_after_commit(redis_conn):
    meeting = make_meeting()
    pubsub = redis_conn.pubsub()
    pubsub.subscribe(status_channel(meeting.id))
    pubsub.get_message(timeout=1)

    lifecycle.transition(meeting.id, MeetingStatus.JOINING, source=TransitionSource.BOT_CALLBACK)

    message = pubsub.get_message(timeout=2)
    pubsub.close()
    assert message is not None
    event = json.loads(message["data"])
    assert event["type"] == "meeting.status"
    assert event["meeting"] == {"id": meeting.id, "platform": meeting.platform,
                                "native_id": meeting.native_meeting_id}
    assert event["payload"]["status"] == "joining"


@pytest.mark.django_db(transaction=True)
def test_refused_transition_publishes_nothing(redis_conn):
    meeting = make_meeting(status=MeetingStatus.COMPLETED)
    pubsub = redis_conn.pubsub()
    pubsub.subscribe(status_channel(meeting.id))
    pubsub.get_message(timeout=1)

    result = lifecycle.transition(meeting.id, MeetingStatus.ACTIVE, source=TransitionSource.BOT_CALLBACK)

    assert result.outcome is Outcome.REFUSED
    assert pubsub.get_message(timeout=0.3) is None
    pubsub.close()


@pytest.mark.django_db
def test_completion_sets_end_time_reason_and_clears_deadline():
    meeting = make_meeting(status=MeetingStatus.ACTIVE)
    lifecycle.transition(meeting.id, MeetingStatus.COMPLETED, source=USER, completion_reason="stopped")
    meeting.refresh_from_db()
    assert meeting.end_time is not None
    assert meeting.completion_reason == "stopped"
    assert meeting.data["completion_reason"] == "stopped"
    assert meeting.deadline_at is None
    record = meeting.transitions.last()
    assert record.completion_reason == "stopped"


@pytest.mark.django_db
@pytest.mark.parametrize("reported", [None, "stopped"])
def test_a_stopped_meeting_completes_with_the_reason_recorded_with_its_stop(reported):
    meeting = make_meeting(status=MeetingStatus.ACTIVE)
    lifecycle.transition(meeting.id, MeetingStatus.STOPPING, source=USER,
                         completion_reason="max_duration")

    lifecycle.transition(meeting.id, MeetingStatus.COMPLETED, source=TransitionSource.GRACE_FINALIZER,
                         completion_reason=reported)

    meeting.refresh_from_db()
    assert meeting.completion_reason == "max_duration"
    assert meeting.data["completion_reason"] == "max_duration"
    assert meeting.transitions.last().completion_reason == "max_duration"


@pytest.mark.django_db
def test_a_specific_completion_reason_wins_over_the_one_recorded_with_the_stop():
    meeting = make_meeting(status=MeetingStatus.ACTIVE)
    lifecycle.transition(meeting.id, MeetingStatus.STOPPING, source=USER,
                         completion_reason="max_duration")

    lifecycle.transition(meeting.id, MeetingStatus.COMPLETED, source=USER, completion_reason="left_alone")

    assert Meeting.objects.get(pk=meeting.pk).completion_reason == "left_alone"


@pytest.mark.django_db
def test_failure_without_stage_records_the_stage_it_was_in():
    meeting = make_meeting(status=MeetingStatus.AWAITING_ADMISSION)
    lifecycle.transition(meeting.id, MeetingStatus.FAILED, source=TransitionSource.BOT_CALLBACK)
    meeting.refresh_from_db()
    assert meeting.failure_stage == "awaiting_admission"
    assert meeting.data["failure_stage"] == "awaiting_admission"


@pytest.mark.django_db
def test_each_applied_transition_resets_the_deadline(settings):
    settings.JOINING_TIMEOUT_SECONDS = 100
    settings.BOT_STOP_DELAY_SECONDS = 30
    settings.BOT_STOP_GRACE_SECONDS = 10
    meeting = make_meeting()
    lifecycle.transition(meeting.id, MeetingStatus.JOINING, source=TransitionSource.BOT_CALLBACK)
    meeting.refresh_from_db()
    assert 95 < (meeting.deadline_at - meeting.updated_at).total_seconds() <= 100
    lifecycle.transition(meeting.id, MeetingStatus.STOPPING, source=USER)
    meeting.refresh_from_db()
    assert 35 < (meeting.deadline_at - meeting.updated_at).total_seconds() <= 40
    assert meeting.stop_requested_at is not None


@pytest.mark.django_db
def test_active_sets_start_time_once():
    meeting = make_meeting(status=MeetingStatus.AWAITING_ADMISSION)
    lifecycle.transition(meeting.id, MeetingStatus.ACTIVE, source=TransitionSource.BOT_CALLBACK)
    meeting.refresh_from_db()
    assert meeting.start_time is not None


@pytest.mark.django_db
def test_data_updates_merge_only_when_applied():
    meeting = make_meeting(status=MeetingStatus.COMPLETED, data={"bot_name": "x"})
    lifecycle.transition(meeting.id, MeetingStatus.FAILED, source=TransitionSource.LAUNCH,
                         data_updates={"last_error": "boom"})
    meeting.refresh_from_db()
    assert "last_error" not in meeting.data

    other = make_meeting(data={"bot_name": "y"})
    lifecycle.transition(other.id, MeetingStatus.FAILED, source=TransitionSource.LAUNCH,
                         failure_stage="requested", data_updates={"last_error": "boom"})
    other.refresh_from_db()
    assert other.data == {"bot_name": "y", "last_error": "boom", "failure_stage": "requested"}


@pytest.mark.django_db
def test_stale_session_never_moves_the_meeting_and_is_recorded():
    meeting = make_meeting(status=MeetingStatus.ACTIVE)
    old = make_session(meeting)
    make_session(meeting)  # the bot restarted: the new session is current

    result = lifecycle.transition(meeting.id, MeetingStatus.FAILED, source=TransitionSource.BOT_CALLBACK,
                                  session=old, require_current_session=True)

    meeting.refresh_from_db()
    assert result.outcome is Outcome.REFUSED
    assert "stale session" in result.refusal
    assert meeting.status == MeetingStatus.ACTIVE
    assert meeting.transitions.last().session_id == old.id


@pytest.mark.django_db
def test_creation_records_the_first_transition_and_deadline():
    meeting = make_meeting()
    first = meeting.transitions.get()
    assert (first.from_status, first.to_status, first.applied) == ("", "requested", True)
    assert meeting.deadline_at is not None


@pytest.mark.django_db
def test_transition_from_session_moves_the_meeting_of_its_current_session():
    meeting = make_meeting()
    session = make_session(meeting)

    result = lifecycle.transition_from_session(session.session_uid, MeetingStatus.JOINING,
                                               source=TransitionSource.BOT_CALLBACK)

    assert result.outcome is Outcome.APPLIED and result.session == session
    assert Meeting.objects.get(pk=meeting.pk).status == MeetingStatus.JOINING
    assert result.record.session_id == session.id


@pytest.mark.django_db
def test_transition_from_session_refuses_a_session_that_is_not_current():
    meeting = make_meeting()
    old = make_session(meeting)
    make_session(meeting)  # a newer bot run took over

    result = lifecycle.transition_from_session(old.session_uid, MeetingStatus.JOINING,
                                               source=TransitionSource.BOT_CALLBACK)

    assert result.outcome is Outcome.REFUSED and "stale session" in result.refusal
    assert Meeting.objects.get(pk=meeting.pk).status == MeetingStatus.REQUESTED


@pytest.mark.django_db
def test_transition_from_an_unknown_session_is_none():
    assert lifecycle.transition_from_session(uuid.uuid4(), MeetingStatus.JOINING,
                                             source=TransitionSource.BOT_CALLBACK) is None


@pytest.mark.django_db
def test_transition_locks_the_row():
    meeting = make_meeting()
    with CaptureQueriesContext(connection) as queries:
        lifecycle.transition(meeting.id, MeetingStatus.JOINING, source=TransitionSource.BOT_CALLBACK)
    assert any("FOR UPDATE" in _statement(q["sql"]) for q in queries.captured_queries)


@pytest.mark.django_db
def test_a_stop_request_locks_the_meeting_row_once():
    meeting = make_meeting(status=MeetingStatus.ACTIVE, bot_container_id="proc-0123456789ab", orchestrator="process")
    with CaptureQueriesContext(connection) as queries:
        stopping.request_stop(meeting.id, source=TransitionSource.USER, reason="stop requested by user")

    locks = [q for q in queries.captured_queries  # (a PREPARE is not a run of the statement)
             if not q["sql"].startswith("PREPARE ") and "FOR UPDATE" in _statement(q["sql"])]
    assert len(locks) == 1, [q["sql"] for q in queries.captured_queries]
    assert Meeting.objects.get(pk=meeting.id).status == MeetingStatus.STOPPING


@pytest.mark.django_db(transaction=True)  # no test-wide transaction around it
def test_transition_locked_refuses_to_run_outside_the_transaction_of_its_lock():
    meeting = make_meeting()

    with pytest.raises(TransactionManagementError):
        lifecycle.transition_locked(meeting, MeetingStatus.JOINING, source=TransitionSource.BOT_CALLBACK)
    assert Meeting.objects.get(pk=meeting.id).status == MeetingStatus.REQUESTED


def _statement(sql: str) -> str:
    """The SQL a captured query ran: a prepared statement's (common/compiled.py) or its own."""
    if not sql.startswith("EXECUTE "):
        return sql
    with connection.cursor() as cursor:
        cursor.execute("SELECT statement FROM pg_prepared_statements WHERE name = %s",
                       [sql.split()[1].split("(")[0]])
        return cursor.fetchone()[0]


@pytest.mark.django_db(transaction=True)
def test_concurrent_transitions_yield_one_consistent_history():
    """Threads race every kind of transition on the same meetings; each meeting ends with one
    history in which every applied record starts where the previous one ended."""
    targets = [MeetingStatus.JOINING, MeetingStatus.AWAITING_ADMISSION, MeetingStatus.ACTIVE,
               MeetingStatus.STOPPING, MeetingStatus.COMPLETED, MeetingStatus.FAILED,
               MeetingStatus.ACTIVE, MeetingStatus.STOPPING]
    meetings = [make_meeting() for _ in range(10)]
    errors: list[BaseException] = []

    def race(meeting_id: int, target: str, barrier: threading.Barrier) -> None:
        try:
            barrier.wait(timeout=10)
            lifecycle.transition(meeting_id, target, source=TransitionSource.BOT_CALLBACK,
                                 completion_reason="stopped")
        except BaseException as exc:  # surfaced by the assertion below
            errors.append(exc)
        finally:
            connections.close_all()

    for meeting in meetings:
        barrier = threading.Barrier(len(targets))
        threads = [threading.Thread(target=race, args=(meeting.id, t, barrier)) for t in targets]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)

    assert errors == []
    for meeting in meetings:
        meeting.refresh_from_db()
        applied = list(MeetingTransition.objects.filter(meeting=meeting, applied=True).order_by("id"))
        chain = [r.from_status for r in applied] + [applied[-1].to_status]
        assert chain[0] == ""
        for previous, record in zip(applied, applied[1:]):
            assert record.from_status == previous.to_status
            assert record.to_status in TRANSITIONS[record.from_status]
        assert meeting.status == applied[-1].to_status
        # Every attempt is accounted for: applied, refused, or a no-op repeat.
        attempts = MeetingTransition.objects.filter(meeting=meeting).count() - 1
        assert attempts <= len(targets)


@pytest.mark.django_db(transaction=True)
def test_concurrent_terminal_attempts_have_exactly_one_winner():
    meeting = make_meeting(status=MeetingStatus.STOPPING)
    outcomes: list[Outcome] = []
    lock = threading.Lock()
    barrier = threading.Barrier(12)

    def finish(i: int) -> None:
        try:
            barrier.wait(timeout=10)
            target = MeetingStatus.COMPLETED if i % 2 else MeetingStatus.FAILED
            result = lifecycle.transition(meeting.id, target, source=TransitionSource.GRACE_FINALIZER,
                                          completion_reason="stopped")
            with lock:
                outcomes.append((target, result.outcome))
        finally:
            connections.close_all()

    threads = [threading.Thread(target=finish, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)

    applied = [o for o in outcomes if o[1] is Outcome.APPLIED]
    assert len(outcomes) == 12
    assert len(applied) == 1
    meeting.refresh_from_db()
    assert meeting.status == applied[0][0]
    assert MeetingTransition.objects.filter(meeting=meeting, applied=True, to_status__in=list(TERMINAL)).count() == 1


@pytest.mark.django_db(transaction=True)
def test_the_migration_moves_the_stop_reason_from_data_to_its_column_and_back():
    """meetings 0003: the stop's completion reason, once a hidden key of Meeting.data, is a column
    (the rest of data is kept); reversed, it goes back into data."""
    from tests.factories import make_user
    from tests.support import latest_migrations, migrate_to as migrate

    old = [("meetings", "0002_post_meeting_pending")]
    latest = latest_migrations("meetings")
    user = make_user()
    try:
        OldMeeting = migrate(old).get_model("meetings", "Meeting")
        stopped = OldMeeting.objects.create(user_id=user.id, platform="google_meet", native_meeting_id="abc-defg-hij",
                                            status="stopping", data={"stop_completion_reason": "max_duration",
                                                                     "bot_name": "b"})
        plain = OldMeeting.objects.create(user_id=user.id, platform="google_meet", native_meeting_id="abc-defg-hik",
                                          status="active", data={"bot_name": "c"})

        migrate(latest)

        assert Meeting.objects.values_list("stop_reason", "data").get(pk=stopped.pk) == ("max_duration", {"bot_name": "b"})
        assert Meeting.objects.values_list("stop_reason", "data").get(pk=plain.pk) == (None, {"bot_name": "c"})

        OldMeeting = migrate(old).get_model("meetings", "Meeting")
        assert OldMeeting.objects.get(pk=stopped.pk).data == {"stop_completion_reason": "max_duration", "bot_name": "b"}
    finally:
        migrate(latest)
