"""Statuses, reasons, stages and the one transition table (from the wire contract)."""
from __future__ import annotations

from django.db import models


class MeetingStatus(models.TextChoices):
    # A bot asked for later (`POST /bots` with `join_at`): no bot, no seat; the scheduler
    # (meetings/launching/scheduled.py) claims it (-> requested) when join_at is due.
    SCHEDULED = "scheduled"
    REQUESTED = "requested"
    JOINING = "joining"
    AWAITING_ADMISSION = "awaiting_admission"
    ACTIVE = "active"
    STOPPING = "stopping"
    COMPLETED = "completed"
    FAILED = "failed"


S = MeetingStatus

TERMINAL = frozenset({S.COMPLETED, S.FAILED})
# Statuses that hold a seat against the user's limit (a bot was asked for now, or runs).
LIVE = frozenset({S.REQUESTED, S.JOINING, S.AWAITING_ADMISSION, S.ACTIVE})
# Statuses in which a user may have only one meeting per (platform, id): the live ones and a
# scheduled one (a second request for a meeting already scheduled is a duplicate, 409), though a
# scheduled meeting takes its seat only when it is launched.
EXCLUSIVE = LIVE | {S.SCHEDULED}
NON_TERMINAL = frozenset(set(S) - TERMINAL)

# A condition of a live meeting the Vexa bot reports as a status (it needs a person: a consent
# prompt, a sign-in): kept in `data` and announced, never a status of ours.
NEEDS_HUMAN_HELP = "needs_human_help"
# `data` keys of the conditions a bot reported; each holds only until the meeting's status changes.
CONDITION_KEYS = (NEEDS_HUMAN_HELP, "bot_reported_status")

TRANSITIONS: dict[str, frozenset[str]] = {
    # -> requested: the scheduler's claim at join_at; -> completed: cancelled (DELETE /bots) before
    # any bot existed; -> failed: not launched by its deadline (the sweep) or by an admin.
    S.SCHEDULED: frozenset({S.REQUESTED, S.COMPLETED, S.FAILED}),
    S.REQUESTED: frozenset({S.JOINING, S.AWAITING_ADMISSION, S.ACTIVE, S.STOPPING, S.COMPLETED, S.FAILED}),
    # joining -> active is allowed on purpose (Vexa forbade it; real bots skip the waiting room).
    S.JOINING: frozenset({S.AWAITING_ADMISSION, S.ACTIVE, S.STOPPING, S.COMPLETED, S.FAILED}),
    S.AWAITING_ADMISSION: frozenset({S.ACTIVE, S.STOPPING, S.COMPLETED, S.FAILED}),
    S.ACTIVE: frozenset({S.STOPPING, S.COMPLETED, S.FAILED}),
    S.STOPPING: frozenset({S.COMPLETED, S.FAILED}),
    S.COMPLETED: frozenset(),
    S.FAILED: frozenset(),
}


def is_allowed(from_status: str, to_status: str) -> bool:
    return to_status in TRANSITIONS.get(from_status, frozenset())


class CompletionReason(models.TextChoices):
    STOPPED = "stopped"
    VALIDATION_ERROR = "validation_error"
    AWAITING_ADMISSION_TIMEOUT = "awaiting_admission_timeout"
    AWAITING_ADMISSION_REJECTED = "awaiting_admission_rejected"
    LEFT_ALONE = "left_alone"
    EVICTED = "evicted"
    REMOVED_BY_ADMIN = "removed_by_admin"
    ADMISSION_REJECTED_BY_ADMIN = "admission_rejected_by_admin"
    MAX_DURATION = "max_duration"
    TIMEOUT = "timeout"


# A meeting fails in the status it was in: any but the terminal ones (FailureStage.REQUESTED...).
FailureStage = models.TextChoices(
    "FailureStage", [(status.name, status.value) for status in MeetingStatus if status not in TERMINAL],
    module=__name__)


class TransitionSource(models.TextChoices):
    USER = "user"
    BOT_CALLBACK = "bot_callback"
    DELAYED_STOP = "delayed_stop"
    GRACE_FINALIZER = "grace_finalizer"
    ORPHAN_SWEEP = "orphan_sweep"
    ADMIN = "admin"
    LAUNCH = "launch"


class Platform(models.TextChoices):
    GOOGLE_MEET = "google_meet"
    TEAMS = "teams"
    ZOOM = "zoom"


# The bot callbacks of the protocol (`/bots/internal/callback/<name>`): the callback handler accepts
# these, and the metrics label callback latency by them (anything else is "unknown").
CALLBACK_NAMES = ("joining", "awaiting_admission", "started", "exited", "status_change")
