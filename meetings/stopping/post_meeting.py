"""Work done exactly once per meeting when it reaches a terminal status, whatever path ended it
(callback, finalizer, sweep, admin).

`run()` claims the meeting under its row lock and records completion in the same transaction, so
a duplicate or redelivered task does nothing and a lost enqueue is re-driven by the sweep. Steps
run in order inside that transaction: they must only write to the database (outbox rows, for
instance); anything that talks to the outside is enqueued on commit by the step itself.
"""
from __future__ import annotations

import logging
from typing import Callable

from django.db import transaction
from django.utils import timezone

from common.queues import POST_MEETING
from common.tasks import task
from meetings.models import Meeting

log = logging.getLogger(__name__)

Step = Callable[[Meeting], None]

# The ordered registry of post-meeting steps; `register` appends to it.
STEPS: list[Step] = []


def enqueue(meeting_id: int) -> None:
    """Hand an ended meeting to the post-meeting worker (a lifecycle listener, on terminal). A lost
    enqueue is re-driven by the sweep (post_meeting_done_at stays empty); a duplicate run does
    nothing (`run` claims the row under lock)."""
    run.delay(meeting_id)


def register(step: Step) -> Step:
    if step not in STEPS:
        STEPS.append(step)
    return step


@task(name="meetings.post_meeting", queue=POST_MEETING)
def run(meeting_id: int) -> bool:
    """Run the steps for a terminal meeting once; True if this call ran them."""
    with transaction.atomic():
        meeting = Meeting.objects.select_for_update().filter(pk=meeting_id).first()
        if meeting is None or not meeting.is_terminal or meeting.post_meeting_done_at is not None:
            return False
        for step in STEPS:
            step(meeting)
        meeting.post_meeting_done_at = timezone.now()
        meeting.save(update_fields=["post_meeting_done_at", "updated_at"])
    log.info("meeting %s: post-meeting work done (%d steps)", meeting_id, len(STEPS))
    return True
