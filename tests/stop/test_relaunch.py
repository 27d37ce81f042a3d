"""A launch task lost before it started the bot (its worker was SIGKILLed; the broker hands it back
only after the visibility timeout) is re-enqueued by the sweep, so the user's bot still starts
instead of the meeting waiting for REQUESTED_TIMEOUT_SECONDS to fail it."""
from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from meetings import services as bot_services, tasks
from meetings.models import Meeting
from meetings.stopping import reconcile
from tests.factories import make_user
from tests.stop.conftest import lose_queued_tasks, queued_tasks

pytestmark = pytest.mark.django_db(transaction=True)


def lost_launch_request() -> Meeting:
    """A requested meeting whose launch task never ran (none is queued), last touched long ago."""
    meeting = bot_services.request_bot(make_user(), bot_services.BotRequest("zoom", "123456789"))
    lose_queued_tasks()  # the launch enqueued on commit is lost with its worker
    Meeting.objects.filter(pk=meeting.pk).update(updated_at=timezone.now() - timedelta(minutes=5))
    return meeting


def test_the_sweep_re_enqueues_a_lost_launch(settings):
    settings.ORPHAN_GRACE_SECONDS = 60
    meeting = lost_launch_request()

    _plan, summary = reconcile.sweep()

    assert summary.relaunched == 1
    assert [t["args"] for t in queued_tasks("meetings.launch_bot")] == [[meeting.id]]


def test_the_relaunched_bot_starts(settings, bots):
    settings.ORPHAN_GRACE_SECONDS = 60
    meeting = lost_launch_request()
    reconcile.sweep()
    [launch] = queued_tasks("meetings.launch_bot")

    tasks.launch_bot(*launch["args"])

    meeting.refresh_from_db()
    assert meeting.bot_container_id is not None
    assert bots.running(meeting.bot_container_id)


def test_a_fresh_request_is_left_to_its_own_launch(settings):
    settings.ORPHAN_GRACE_SECONDS = 60
    meeting = bot_services.request_bot(make_user(), bot_services.BotRequest("zoom", "987654321"))

    _plan, summary = reconcile.sweep()

    assert summary.relaunched == 0
    assert Meeting.objects.get(pk=meeting.pk).status == "requested"


def test_a_relaunch_running_alongside_the_original_launch_starts_no_second_bot(settings, bots):
    from meetings.launching import launch

    settings.ORPHAN_GRACE_SECONDS = 60
    meeting = lost_launch_request()
    # The original launch, delayed in the queue, runs after all: it claims the session and is
    # starting the bot (not listed yet) when the sweep's relaunch runs.
    launch._claim_session(meeting.id)

    assert launch.launch(meeting.id) is None
    assert bots.backend.list() == []
