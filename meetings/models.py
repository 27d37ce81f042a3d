"""Meeting data and its invariants. Flows live in services (lifecycle, bots, callbacks, reconcile)."""
from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models
from django.db.models import Q

from meetings.lifecycle.statuses import (EXCLUSIVE, CompletionReason, FailureStage, MeetingStatus, Platform,
                                         TransitionSource)
from meetings.payloads import serialized, status_change_event

# The lengths of the identifiers the API and the bots send: checked there (a longer one is refused
# with a clear error), never cut by the database.
NATIVE_MEETING_ID_LENGTH = 255
CONTAINER_ID_LENGTH = 255
# A backend instance's id (Orchestrator.instance_id()), on a meeting, a session and a listing.
INSTANCE_LENGTH = 255


class Meeting(models.Model):
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="meetings")
    platform = models.CharField(max_length=32, choices=Platform.choices)
    native_meeting_id = models.CharField(max_length=NATIVE_MEETING_ID_LENGTH)
    # Written only by meetings.lifecycle.transitions.
    status = models.CharField(max_length=32, choices=MeetingStatus.choices, default=MeetingStatus.REQUESTED)
    completion_reason = models.CharField(max_length=64, choices=CompletionReason.choices, null=True, blank=True)
    failure_stage = models.CharField(max_length=32, choices=FailureStage.choices, null=True, blank=True)
    bot_container_id = models.CharField(max_length=CONTAINER_ID_LENGTH, null=True, blank=True)
    orchestrator = models.CharField(max_length=32, blank=True, default="")
    # The backend instance that runs the bot (Orchestrator.instance_id()): only a listing of that
    # instance may judge the bot gone, and work on the bot is sent to that instance's queue.
    # Empty for bots recorded before instances were: no listing judges those (deadlines still act).
    bot_instance = models.CharField(max_length=INSTANCE_LENGTH, blank=True, default="")
    # The bot session whose callbacks may move the meeting (mirrored in Redis for command routing).
    current_session = models.ForeignKey("MeetingSession", null=True, blank=True, on_delete=models.SET_NULL,
                                        related_name="+")
    start_time = models.DateTimeField(null=True, blank=True)
    end_time = models.DateTimeField(null=True, blank=True)
    data = models.JSONField(default=dict, blank=True)
    stop_requested_at = models.DateTimeField(null=True, blank=True)
    # When the user asked the bot to join (`POST /bots` `join_at`, UTC); null for a bot asked for
    # now. A `scheduled` meeting is launched from it by meetings/launching/scheduled.py.
    join_at = models.DateTimeField(null=True, blank=True)
    # The completion reason a stop ends the meeting with (set with `stopping` by meetings.lifecycle.transitions:
    # "stopped" for a user's stop, "max_duration" for the sweep's), whoever then reports the end.
    stop_reason = models.CharField(max_length=64, choices=CompletionReason.choices, null=True, blank=True)
    # The next moment the manager must act if nothing else happens (set by every applied transition).
    deadline_at = models.DateTimeField(null=True, blank=True, db_index=True)
    # Set (under the row lock) when post-meeting work ran: it runs once whatever path ended the
    # meeting, and the sweep re-enqueues it for terminal meetings where it is still empty.
    post_meeting_done_at = models.DateTimeField(null=True, blank=True)
    # Set when the user deleted the meeting (DELETE /meetings/...): its personal data is gone and
    # it is hidden from them; the row stays for the counts (meetings/retention.py).
    redacted_at = models.DateTimeField(null=True, blank=True)
    # Set when the retention job deleted its transitions (RETENTION_TRANSITIONS_DAYS after its end).
    history_purged_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["user", "platform", "native_meeting_id"],
                condition=Q(status__in=sorted(EXCLUSIVE)),
                name="meeting_unique_live_per_user",
            ),
        ]
        indexes = [
            models.Index(fields=["user", "platform", "native_meeting_id"], name="meeting_user_platform_id"),
            models.Index(fields=["status"], name="meeting_status"),
            models.Index(fields=["end_time"], name="meeting_post_meeting_pending",
                         condition=Q(post_meeting_done_at__isnull=True, status__in=["completed", "failed"])),
            # The scheduler's query: scheduled meetings by join_at (a few among many ended ones).
            models.Index(fields=["join_at"], name="meeting_scheduled_join_at", condition=Q(status="scheduled")),
            # The retention job's query: ended meetings whose history is still kept, oldest end first.
            models.Index(fields=["end_time"], name="meeting_history_kept",
                         condition=Q(history_purged_at__isnull=True, status__in=["completed", "failed"])),
        ]

    def __str__(self) -> str:
        return f"Meeting {self.pk} {self.platform}/{self.native_meeting_id} [{self.status}]"

    @property
    def is_terminal(self) -> bool:
        return self.status in (MeetingStatus.COMPLETED, MeetingStatus.FAILED)


class MeetingSession(models.Model):
    """One run of a bot for a meeting; the session uid is the bot's `connection_id` capability."""

    meeting = models.ForeignKey(Meeting, on_delete=models.CASCADE, related_name="sessions")
    session_uid = models.UUIDField(unique=True, default=uuid.uuid4)
    started_at = models.DateTimeField(auto_now_add=True)
    ended_at = models.DateTimeField(null=True, blank=True)
    exit_code = models.IntegerField(null=True, blank=True)
    # Where the bot this session launched runs (the backend instance), once it is started.
    instance = models.CharField(max_length=INSTANCE_LENGTH, blank=True, default="")

    class Meta:
        indexes = [models.Index(fields=["meeting", "-started_at"], name="session_meeting_newest")]

    def __str__(self) -> str:
        return f"Session {self.session_uid} of meeting {self.meeting_id}"


class EventField(models.TextField):
    """The event an applied transition is (`meeting.status_change`, JSON text): built when the row
    is inserted, after the meeting's own write in the same statement or transaction has set its
    `updated_at` and this row its `created_at`, so it is the meeting exactly as the transition
    left it. The webhook outbox sends these bytes and `GET /events` replays them: one event, one
    body, however it is read (meetings/events/log.py)."""

    def pre_save(self, model_instance, add):
        value = getattr(model_instance, self.attname)
        if add and not value and model_instance.applied:
            value = serialized(status_change_event(model_instance.meeting, model_instance))
            setattr(model_instance, self.attname, value)
        return value


class MeetingTransition(models.Model):
    """Append-only record of every transition attempt, applied or refused. The applied ones are
    the user's event log (meetings/events/log.py)."""

    meeting = models.ForeignKey(Meeting, on_delete=models.CASCADE, related_name="transitions")
    # The meeting's user, copied so that a user's event log is one index range (the index below)
    # instead of a join over all their meetings. No constraint of its own: the meeting's cascades.
    user = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.DO_NOTHING,
                             db_constraint=False, db_index=False, related_name="+")
    from_status = models.CharField(max_length=32, blank=True, default="")
    to_status = models.CharField(max_length=32)
    source = models.CharField(max_length=32, choices=TransitionSource.choices)
    reason = models.TextField(blank=True, default="")
    completion_reason = models.CharField(max_length=64, null=True, blank=True)
    failure_stage = models.CharField(max_length=32, null=True, blank=True)
    session = models.ForeignKey(MeetingSession, null=True, blank=True, on_delete=models.SET_NULL,
                                related_name="transitions")
    metadata = models.JSONField(default=dict, blank=True)
    applied = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    # Declared after created_at: its pre_save reads the timestamp that one's sets.
    event = EventField(blank=True, default="")

    class Meta:
        ordering = ["id"]
        indexes = [
            models.Index(fields=["meeting", "id"], name="transition_meeting_order"),
            # GET /events and the stream's replay: a user's applied transitions after a cursor.
            models.Index(fields=["user", "id"], name="transition_user_event_log", condition=Q(applied=True)),
        ]

    def __str__(self) -> str:
        mark = "" if self.applied else " (refused)"
        return f"{self.from_status or '∅'} → {self.to_status} by {self.source}{mark}"


class BotInstance(models.Model):
    """A backend instance some worker listed (a Docker engine, a Nomad cluster, a host's process
    backend), and when it last listed it successfully. A live meeting whose bot's instance nobody
    has listed for INSTANCE_UNSEEN_SECONDS is reported (sweep log, metrics, admin) and left to the
    explicit lost-instance policy (meetings/stopping/instances.py), never judged gone by a sweep that could
    not see it."""

    instance = models.CharField(max_length=INSTANCE_LENGTH, primary_key=True)
    backend = models.CharField(max_length=32)
    last_listed_at = models.DateTimeField()
    listed_by = models.CharField(max_length=255, blank=True, default="")  # the host of the last listing

    def __str__(self) -> str:
        return self.instance


class EventLogHorizon(models.Model):
    """How far a user's event log has been purged: every event at or before `position` (a
    transition id) may be gone, so a cursor before it answers 410 and the log is served from it
    (meetings/events/log.py). Raised, never lowered, in the purge's own transaction."""

    user = models.OneToOneField(settings.AUTH_USER_MODEL, primary_key=True, on_delete=models.CASCADE,
                                related_name="+")
    position = models.BigIntegerField()
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"event log of user {self.user_id} served after {self.position}"
