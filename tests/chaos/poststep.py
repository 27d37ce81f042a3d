"""A post-meeting step loaded into the chaos suite's Celery workers (`--include
tests.chaos.poststep`). It records each run in a table inside `meetings.stopping.post_meeting.run`'s
transaction, so a run counts if and only if it committed: the suite then checks that post-meeting
work ran exactly once per meeting, whatever path ended it and whatever worker died."""
from __future__ import annotations

import os

from django.db import connection

from meetings.stopping import post_meeting
from tests.chaos.postcount import TABLE


def record_run(meeting) -> None:
    with connection.cursor() as cursor:
        cursor.execute(f"INSERT INTO {TABLE} (meeting_id, pid) VALUES (%s, %s)", [meeting.id, os.getpid()])


post_meeting.register(record_run)
