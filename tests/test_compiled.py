"""The compiled hot-path statements (common/compiled.py) write and read exactly what the ORM
calls they stand for would, and step aside for model signal receivers."""
from __future__ import annotations

import datetime
import json

import pytest
from django.db import DatabaseError, connection, transaction
from django.db.models.signals import pre_save
from django.test.utils import CaptureQueriesContext

from common import compiled
from common.compiled import CompiledQuery
from meetings.payloads import timestamp
from meetings.lifecycle.statuses import MeetingStatus, TransitionSource
from meetings.models import Meeting, MeetingTransition
from tests.factories import make_meeting, make_session

LOCK = CompiledQuery(
    lambda pk: Meeting.objects.select_related("user").select_for_update(of=("self",)).filter(pk=pk),
    Meeting._meta.pk, 0)

pytestmark = pytest.mark.django_db  # in a transaction: the lock query needs one


def _run(queries) -> list[str]:
    """The statements run, without the PREPARE a statement's first use in a session sends."""
    return [q["sql"] for q in queries.captured_queries if not q["sql"].startswith("PREPARE ")]


def _row(model, pk) -> dict:
    return model.objects.filter(pk=pk).values().get()


def test_fetch_returns_the_querysets_instances_with_their_related_user():
    meeting = make_meeting(data={"k": [1, 2]})

    (found,) = LOCK.fetch(meeting.pk)

    expected = Meeting.objects.select_related("user").get(pk=meeting.pk)
    assert {f.attname: getattr(found, f.attname) for f in Meeting._meta.concrete_fields} == \
        {f.attname: getattr(expected, f.attname) for f in Meeting._meta.concrete_fields}
    assert found.user.email == expected.user.email  # populated, not lazily fetched
    assert found._state.adding is False and found._state.db == "default"


def test_fetch_of_an_unknown_key_returns_nothing():
    assert LOCK.fetch(2**62) == []


def _prepared() -> dict[str, str]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT name, statement FROM pg_prepared_statements")
        return dict(cursor.fetchall())


def test_fetch_runs_the_querysets_own_statement_prepared_once_per_session():
    meeting = make_meeting()
    queryset = Meeting.objects.select_related("user").select_for_update(of=("self",)).filter(pk=meeting.pk)
    orm_sql = queryset.query.sql_with_params()[0]

    with CaptureQueriesContext(connection) as first:
        LOCK.fetch(meeting.pk)
    with CaptureQueriesContext(connection) as second:
        LOCK.fetch(meeting.pk)

    name = LOCK._name
    assert _prepared()[name] == f"PREPARE {name} AS " + orm_sql.replace("%s", "$1")
    assert [q["sql"].split("(")[0] for q in second.captured_queries] == [f"EXECUTE {name}"]
    assert len(first.captured_queries) <= 2  # PREPARE (first use in this session) + EXECUTE


def test_without_prepared_statements_fetch_sends_the_querysets_sql(settings):
    settings.DB_PREPARED_STATEMENTS = False
    meeting = make_meeting()
    with CaptureQueriesContext(connection) as compiled_run:
        LOCK.fetch(meeting.pk)
    with CaptureQueriesContext(connection) as orm_run:
        list(Meeting.objects.select_related("user").select_for_update(of=("self",)).filter(pk=meeting.pk))
    assert [q["sql"] for q in compiled_run.captured_queries] == [q["sql"] for q in orm_run.captured_queries]


@pytest.mark.django_db(transaction=True)
def test_a_statement_prepared_in_a_rolled_back_transaction_still_runs():
    meeting = make_meeting()
    connection.close()  # a fresh session: nothing prepared yet
    with pytest.raises(RuntimeError), transaction.atomic():
        LOCK.fetch(meeting.pk)
        raise RuntimeError("roll back")

    assert LOCK._name in _prepared()
    with transaction.atomic():
        (found,) = LOCK.fetch(meeting.pk)
    assert found.pk == meeting.pk


@pytest.mark.django_db(transaction=True)
def test_a_new_database_session_prepares_again():
    meeting = make_meeting()
    with transaction.atomic():
        LOCK.fetch(meeting.pk)
    connection.close()

    with CaptureQueriesContext(connection) as queries, transaction.atomic():
        (found,) = LOCK.fetch(meeting.pk)

    assert found.pk == meeting.pk
    assert any(q["sql"].startswith(f"PREPARE {LOCK._name} AS ") for q in queries.captured_queries)


def _transition(meeting, **fields) -> MeetingTransition:
    return MeetingTransition(meeting=meeting, from_status="requested", to_status="active",
                             source=TransitionSource.USER, **fields)


def test_save_fields_and_insert_writes_what_save_with_update_fields_and_save_write():
    meeting, twin = make_meeting(), make_meeting()
    moment = datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)
    for target in (meeting, twin):
        target.status = MeetingStatus.ACTIVE
        target.start_time = moment
        target.data = {"language": "en", "nested": {"a": None}}
        target.completion_reason = None
    names = ["status", "start_time", "data", "completion_reason", "updated_at"]
    record, twin_record = _transition(meeting, metadata={"k": 1}), _transition(twin, metadata={"k": 1})

    with CaptureQueriesContext(connection) as queries:
        compiled.save_fields_and_insert(meeting, names, record)
    twin.save(update_fields=names)
    twin_record.save()

    assert len(_run(queries)) == 1
    mine, theirs = _row(Meeting, meeting.pk), _row(Meeting, twin.pk)
    for name in ("status", "start_time", "data", "completion_reason"):
        assert mine[name] == theirs[name]
    assert mine["updated_at"] == meeting.updated_at > meeting.created_at  # auto_now ran
    assert record.pk is not None and record._state.adding is False
    written, expected = _row(MeetingTransition, record.pk), _row(MeetingTransition, twin_record.pk)
    for name in ("from_status", "to_status", "source", "reason", "metadata", "applied", "session_id"):
        assert written[name] == expected[name]
    assert written["meeting_id"] == meeting.pk


def test_save_fields_and_insert_leaves_the_other_columns_alone():
    meeting = make_meeting(data={"keep": True})
    meeting.status = MeetingStatus.JOINING
    meeting.data = {"lost": True}  # changed in memory, not named

    compiled.save_fields_and_insert(meeting, ["status"], _transition(meeting))

    row = _row(Meeting, meeting.pk)
    assert row["status"] == MeetingStatus.JOINING and row["data"] == {"keep": True}


def test_save_fields_and_insert_of_a_deleted_row_raises_like_save():
    meeting, other = make_meeting(), make_meeting()
    record = _transition(other)
    Meeting.objects.filter(pk=meeting.pk).delete()
    meeting.status = MeetingStatus.JOINING
    with pytest.raises(DatabaseError, match="did not affect any rows"):
        compiled.save_fields_and_insert(meeting, ["status"], record)


def test_insert_writes_what_save_writes_and_sets_the_key():
    meeting = make_meeting()
    session = make_session(meeting)
    record = MeetingTransition(meeting=meeting, from_status="requested", to_status="joining",
                               source=TransitionSource.BOT_CALLBACK, reason="r", session=session,
                               metadata={"callback": "joining", "n": 1})
    twin = MeetingTransition(meeting=meeting, from_status="requested", to_status="joining",
                             source=TransitionSource.BOT_CALLBACK, reason="r", session=session,
                             metadata={"callback": "joining", "n": 1})

    with CaptureQueriesContext(connection) as queries:
        compiled.insert(record)
    twin.save()

    assert len(_run(queries)) == 1
    assert record.pk is not None and record._state.adding is False and record._state.db == "default"
    mine, theirs = _row(MeetingTransition, record.pk), _row(MeetingTransition, twin.pk)
    assert mine.pop("id") == record.pk
    theirs.pop("id")
    assert mine.pop("created_at") == record.created_at
    theirs.pop("created_at")
    # The event body carries the transition's own timestamp (and is built by the same pre_save).
    assert mine.pop("event") == record.event
    assert json.loads(theirs.pop("event"))["status_change"]["timestamp"] == timestamp(twin.created_at)
    assert mine == theirs


def test_writes_go_through_save_when_a_pre_save_receiver_listens():
    meeting = make_meeting()
    seen = []

    def receiver(sender, instance, **kwargs):
        seen.append((sender, kwargs.get("update_fields")))

    pre_save.connect(receiver, sender=Meeting)
    pre_save.connect(receiver, sender=MeetingTransition)
    try:
        meeting.status = MeetingStatus.JOINING
        compiled.save_fields_and_insert(meeting, ["status"], _transition(meeting))
        compiled.insert(_transition(meeting))
    finally:
        pre_save.disconnect(receiver, sender=Meeting)
        pre_save.disconnect(receiver, sender=MeetingTransition)

    assert seen == [(Meeting, frozenset({"status"})), (MeetingTransition, None), (MeetingTransition, None)]
    assert _row(Meeting, meeting.pk)["status"] == MeetingStatus.JOINING
