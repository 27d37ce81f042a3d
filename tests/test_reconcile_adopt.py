"""The sweep adopts the bot of a live meeting whose launch died between starting the bot and
recording it (found by the chaos suite: the meeting moved on through the bot's callbacks, the
redelivered launch did nothing, and the bot's silent death went unseen until the maximum
duration)."""
from __future__ import annotations

import logging
import sys
from datetime import datetime, timedelta, timezone

import pytest
from django.utils import timezone as dj_timezone

from meetings.launching.launch import bot_labels, launch
from meetings.lifecycle.statuses import MeetingStatus as S
from meetings.models import Meeting, MeetingSession
from meetings.stopping import reconcile
from meetings.stopping.reconcile import Adopt, Listing, MeetingRow, Plan
from orchestrators import registry
from orchestrators.base import (LABEL_MEETING_ID, LABEL_SESSION_UID, BotInfo, BotSpec, NormalizedStatus,
                                bot_name, session_digest)
from tests.factories import make_meeting, make_session
from tests.support import lose_queued_tasks, queued_tasks

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=timezone.utc)
GRACE = timedelta(seconds=60)


def row(id=1, status="active", container=None):
    return MeetingRow(id, status, NOW + timedelta(hours=1), NOW - timedelta(minutes=10), container,
                      "process" if container else "", None)


def bot(container_id="proc-0123456789ab", meeting_id=1, session="s-1", status=NormalizedStatus.UP):
    labels = {LABEL_MEETING_ID: str(meeting_id)}
    if session:
        labels[LABEL_SESSION_UID] = session
    return BotInfo(container_id, f"bot-{container_id}", status, status.value.lower(), labels, None, None)


def decide(meetings, bots, statuses):
    return reconcile.plan(meetings, {"process": Listing("process", tuple(bots))}, statuses, [], NOW, GRACE)


def test_a_listed_bot_of_a_live_meeting_without_a_recorded_container_is_adopted():
    p = decide([row()], [bot()], {1: "active"})
    assert p.adopt == [Adopt(1, "process", "proc-0123456789ab", "s-1")]
    assert p.containers == [] and p.finalize == []


def test_an_exited_bot_is_adopted_too_so_that_its_death_is_judged():
    p = decide([row()], [bot(status=NormalizedStatus.EXITED)], {1: "active"})
    assert [a.container_id for a in p.adopt] == ["proc-0123456789ab"]


@pytest.mark.parametrize("meetings,bots,statuses", [
    ([row(container="proc-0123456789ab")], [bot()], {1: "active"}),  # already recorded
    ([row()], [bot(session=None)], {1: "active"}),                    # no session label
    ([], [bot()], {1: "completed"}),                                  # ended: stopped, not adopted
])
def test_no_adoption_otherwise(meetings, bots, statuses):
    assert decide(meetings, bots, statuses).adopt == []


@pytest.mark.django_db
def test_adopting_records_the_container_of_a_live_meeting_running_one_of_its_sessions():
    meeting = make_meeting(status=S.ACTIVE)
    session = make_session(meeting)

    summary = reconcile.apply(Plan(adopt=[Adopt(meeting.id, "process", "proc-0123456789ab",
                                                session_digest(session.session_uid))]))

    meeting.refresh_from_db()
    assert (meeting.bot_container_id, meeting.orchestrator, summary.adopted) == ("proc-0123456789ab", "process", 1)


@pytest.mark.django_db
def test_a_bot_labelled_with_its_plain_session_uid_before_the_upgrade_is_still_adopted():
    meeting = make_meeting(status=S.ACTIVE)
    session = make_session(meeting)

    summary = reconcile.apply(Plan(adopt=[Adopt(meeting.id, "process", "proc-0123456789ab",
                                                str(session.session_uid), "host-a")]))

    meeting.refresh_from_db()
    session.refresh_from_db()
    assert (meeting.bot_container_id, session.instance, summary.adopted) == ("proc-0123456789ab", "host-a", 1)


@pytest.mark.django_db
def test_a_session_label_that_names_no_session_is_refused_not_an_error(caplog):
    # A label is whatever the engine lists (a hand-made container, a truncated value): no uuid at all.
    meeting = make_meeting(status=S.ACTIVE)
    make_session(meeting)

    with caplog.at_level(logging.ERROR, logger="meetings.stopping.reconcile"):
        summary = reconcile.apply(Plan(adopt=[Adopt(meeting.id, "process", "proc-0123456789ab", "not-a-session")]))

    assert (Meeting.objects.get(pk=meeting.id).bot_container_id, summary.adopted) == (None, 0)
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


@pytest.mark.django_db
def test_a_bot_adopted_for_a_stopping_meeting_is_asked_to_stop(django_capture_on_commit_callbacks):
    # Its delayed stop ran while no bot was recorded: only the adoption can still stop it.
    lose_queued_tasks()  # another test's tasks are not this one's
    meeting = make_meeting(status=S.STOPPING, stop_requested_at=NOW, stop_reason="stopped")
    session = make_session(meeting)

    with django_capture_on_commit_callbacks(execute=True):
        reconcile.apply(Plan(adopt=[Adopt(meeting.id, "process", "proc-0123456789ab",
                                          session_digest(session.session_uid))]))

    [terminate] = queued_tasks("meetings.terminate_bot")
    assert terminate["args"][:2] == ["process", "proc-0123456789ab"]


@pytest.mark.django_db
@pytest.mark.parametrize("case", ["other session", "already recorded", "ended"])
def test_adopting_refuses_a_bot_that_is_not_the_meetings_or_a_meeting_that_moved_on(case):
    meeting = make_meeting(status=S.COMPLETED if case == "ended" else S.ACTIVE,
                           bot_container_id="proc-aaaaaaaaaaaa" if case == "already recorded" else None)
    session = make_session(meeting)
    other = make_session(make_meeting(status=S.ACTIVE))
    label = session_digest((other if case == "other session" else session).session_uid)

    summary = reconcile.apply(Plan(adopt=[Adopt(meeting.id, "process", "proc-0123456789ab", label)]))

    assert Meeting.objects.get(pk=meeting.id).bot_container_id == (
        "proc-aaaaaaaaaaaa" if case == "already recorded" else None)
    assert summary.adopted == 0


# --- A redelivered launch finds the bot its first delivery started ----------------------------------
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("label", ["digest", "plain uid before the upgrade"])
def test_a_redelivered_launch_adopts_the_bot_of_its_session_instead_of_starting_another(label, settings, tmp_path):
    meeting = make_meeting(status=S.REQUESTED)
    session = make_session(meeting)
    # The first delivery claimed the session long ago, started the bot and died before recording it.
    MeetingSession.objects.filter(pk=session.pk).update(
        started_at=dj_timezone.now() - timedelta(seconds=settings.ORPHAN_GRACE_SECONDS + 60))
    settings.ORCHESTRATOR = "process"
    settings.RUN_DIR = tmp_path
    settings.PROCESS_BOT_COMMAND = f"{sys.executable} -c 'import time; time.sleep(60)'"
    registry.get_orchestrator.cache_clear()
    backend = registry.get_orchestrator()
    labels = bot_labels(meeting, session)
    if label != "digest":
        labels[LABEL_SESSION_UID] = str(session.session_uid)
    first = backend.start(BotSpec(name=bot_name(meeting.id, str(session.session_uid)), config={}, labels=labels))
    try:
        assert launch(meeting.id) == first
        assert [b.container_id for b in backend.list()] == [first]
        assert Meeting.objects.get(pk=meeting.id).bot_container_id == first
    finally:
        for bot in backend.list():
            backend.stop(bot.container_id, timeout=1)
        registry.get_orchestrator.cache_clear()
