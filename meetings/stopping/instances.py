"""Backend instances: where bots run, who has seen them, and the policy for an instance lost for good.

Several hosts may share one database: each runs its own workers, and each sees only the bots of
its own backend instance (its Docker engine, its local processes; a Nomad cluster is one instance
for all). A sweep judges only what it listed (meetings/stopping/reconcile.py), so:
- every successful listing is recorded here (`BotInstance.last_listed_at`);
- the beat's sweep asks every other instance with live bots to sweep its own
  (`reconcile.request_sweep`: `meetings.sweep_instance` on that instance's sweep queue, which only
  its host consumes);
- a live meeting whose instance nobody has listed for INSTANCE_UNSEEN_SECONDS is *unseen*: the
  sweep logs it, /metrics and the Django admin show it, and nothing judges its bot gone. Its
  deadlines still apply. An operator who knows the instance is gone for good ends its meetings
  with the explicit policy, `end_meetings_of` (admin action "End the live meetings of the selected
  lost instances", `manage.py lost_instances --end <instance>`).
"""
from __future__ import annotations

import socket
import zlib
from datetime import datetime, timedelta

from django.conf import settings
from django.db.models import Count
from django.utils import timezone

from meetings.lifecycle import endings, transitions as lifecycle
from meetings.lifecycle.statuses import NON_TERMINAL, CompletionReason, MeetingStatus, TransitionSource
from meetings.models import BotInstance, Meeting

# How long after its last listing an instance is still asked to sweep (its bots of ended meetings
# may still run there), when no live meeting names it.
RECENT = timedelta(hours=1)


def lock_key(instance: str) -> int:
    """The second key of the instance sweep's advisory lock (a PostgreSQL int4)."""
    return zlib.crc32(instance.encode()) & 0x7FFFFFFF


def listed(listings: dict) -> dict[str, str]:
    """{instance: backend} of the listings that succeeded in this pass."""
    return {l.instance: l.backend for l in listings.values() if l.ok and l.instance}


def record_listed(listed_now: dict[str, str], now: datetime) -> None:
    """Record when these instances were listed (one upsert)."""
    if listed_now:
        host = socket.gethostname()
        BotInstance.objects.bulk_create(
            [BotInstance(instance=i, backend=b, last_listed_at=now, listed_by=host) for i, b in listed_now.items()],
            update_conflicts=True, unique_fields=["instance"], update_fields=["backend", "last_listed_at", "listed_by"])


def last_listed() -> dict[str, datetime]:
    """When each known instance was last listed (one query, whatever the number of meetings)."""
    return dict(BotInstance.objects.values_list("instance", "last_listed_at"))


def unseen(meetings: list, listed: set[str], known: dict[str, datetime], now: datetime) -> dict[str, int]:
    """Live meetings per instance of their bot that nobody has listed for INSTANCE_UNSEEN_SECONDS
    (this pass's listings count as seen)."""
    limit = now - timedelta(seconds=settings.INSTANCE_UNSEEN_SECONDS)
    named: dict[str, list] = {}
    for m in meetings:
        if m.bot_instance and m.bot_instance not in listed:
            named.setdefault(m.bot_instance, []).append(m)
    result = {}
    for instance, on_it in named.items():
        # Never listed at all: count from the meetings' own last change.
        last = known.get(instance) or max(m.updated_at for m in on_it)
        if last < limit:
            result[instance] = len(on_it)
    return result


def to_sweep(meetings: list, listed: set[str], known: dict[str, datetime], now: datetime) -> list[str]:
    """The other instances whose sweep to ask for: those of live meetings' bots, and those listed
    in the last hour (bots of ended meetings may still run there)."""
    wanted = {m.bot_instance for m in meetings if m.bot_instance}
    wanted |= {instance for instance, at in known.items() if at >= now - RECENT}
    return sorted(wanted - listed)


def overview(now: datetime | None = None) -> list[dict]:
    """Every known instance with its live meetings and whether it is unseen (admin, metrics)."""
    now = now or timezone.now()
    limit = now - timedelta(seconds=settings.INSTANCE_UNSEEN_SECONDS)
    live = dict(Meeting.objects.filter(status__in=sorted(NON_TERMINAL)).exclude(bot_instance="")
                .order_by().values_list("bot_instance").annotate(n=Count("id")))
    rows = {i.instance: {"instance": i.instance, "backend": i.backend, "last_listed_at": i.last_listed_at,
                         "listed_by": i.listed_by} for i in BotInstance.objects.all()}
    for instance in live:
        rows.setdefault(instance, {"instance": instance, "backend": instance.split(":", 1)[0],
                                   "last_listed_at": None, "listed_by": ""})
    for row in rows.values():
        row["live_meetings"] = live.get(row["instance"], 0)
        row["unseen"] = bool(row["live_meetings"]) and (row["last_listed_at"] is None or row["last_listed_at"] < limit)
    return sorted(rows.values(), key=lambda r: r["instance"])


def end_meetings_of(instance: str, *, by: str) -> int:
    """The lost-instance policy, applied on purpose: end every live meeting whose bot ran on
    `instance` (its host is gone for good and will never report). A stopping meeting completes
    with its stop's reason; any other fails at its stage. Returns how many ended."""
    ended = 0
    ids = Meeting.objects.filter(bot_instance=instance, status__in=sorted(NON_TERMINAL)).values_list("id", "status")
    reason = f"bot instance declared lost by {by}"  # which one: metadata.lost_instance (the admin)
    for meeting_id, status in ids:
        if status == MeetingStatus.STOPPING:
            result = lifecycle.transition(meeting_id, MeetingStatus.COMPLETED, source=TransitionSource.ADMIN,
                                          reason=reason, completion_reason=CompletionReason.STOPPED,
                                          only_from={status}, metadata={"lost_instance": instance},
                                          data_updates=endings.lost_instance(status, instance, by))
        else:
            result = lifecycle.transition(meeting_id, MeetingStatus.FAILED, source=TransitionSource.ADMIN,
                                          reason=reason, failure_stage=status, only_from={status},
                                          metadata={"lost_instance": instance},
                                          data_updates=endings.lost_instance(status, instance, by))
        ended += int(result.applied)
    return ended
