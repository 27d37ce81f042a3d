"""The orphan sweep: deadline enforcement and reconciliation of meetings against the bots the
orchestrators actually run. It is the backstop of every countdown task.

Level-triggered: desired state comes from the database, observed state from one listing per
backend in use, as this host sees it. `plan()` is pure (snapshot in, decisions out); `apply()`
carries the decisions out through the lifecycle function and the orchestrators. Rules:
- a sweep judges only what it listed: a bot is judged gone or exited, or adopted, only from a
  successful listing of the backend instance that runs it (`Meeting.bot_instance`); another
  host's bots are judged by that host's sweep (`sweep_instance`, sent to its instance queue);
- a failed listing means "unknown": nothing is judged gone on that instance;
- the deadlines (from PostgreSQL) are enforced once, by whichever host's sweep runs them;
- a live meeting whose instance nobody has listed for INSTANCE_UNSEEN_SECONDS is reported (log,
  metrics, admin), and ended only by the explicit lost-instance policy (meetings/stopping/instances.py);
- a live bot is never stopped while its meeting is still live;
- a listed bot of a live meeting that has no recorded container (its launch died after starting
  it) is adopted as the meeting's container, so its death is judged like any other;
- every transition names the statuses it expects (`only_from`), so a meeting that moved on since
  the snapshot is left alone;
- bots' Redis users (meetings/launching/bot_credentials.py) are judged by the global sweep from one ACL
  USERS listing of this deployment's users, taken before the database is read: those of no live
  session are removed, live sessions' users that Redis lost are set again.
Decision record: docs/decisions/0010-deadlines-in-postgresql-the-sweep-as-backstop.md.
"""
from __future__ import annotations

import logging
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import redis
from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from common.queues import SWEEP, instance_queue
from common.redis_client import get_redis
from common.tasks import task
from meetings.launching import bot_credentials, launch
from meetings.lifecycle import endings, transitions as lifecycle
from meetings.lifecycle.deadlines import DEADLINES, FAIL, STOP
from meetings.lifecycle.statuses import (NON_TERMINAL, TERMINAL, CompletionReason, MeetingStatus,
                                         TransitionSource)
from meetings.models import Meeting, MeetingSession
from meetings.stopping import bot_control, flow as stopping, instances, post_meeting
from orchestrators.base import LABEL_SESSION_UID, BotInfo, OrchestratorError, labels_name_session
from orchestrators.registry import get_orchestrator

log = logging.getLogger(__name__)

SWEEP_LOCK_KEY = 0x626F746D  # "botm": one sweep at a time across all workers
S = MeetingStatus


# --- Snapshot -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MeetingRow:
    id: int
    status: str
    deadline_at: datetime | None
    updated_at: datetime
    bot_container_id: str | None
    orchestrator: str
    stop_reason: str | None = None
    bot_instance: str = ""


@dataclass(frozen=True)
class Listing:
    """One backend's bots on one instance (this host's view), or the error that kept us from
    seeing them (`bots is None`)."""

    backend: str
    bots: tuple[BotInfo, ...] | None
    error: str = ""
    instance: str = ""

    @property
    def ok(self) -> bool:
        return self.bots is not None


# --- Decisions ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Finalize:
    meeting_id: int
    from_status: str
    to_status: str
    reason: str
    completion_reason: str | None = None
    failure_stage: str | None = None
    stop_container: tuple[str, str, str] | None = None  # (backend, container id, instance) to stop once ended
    metadata: dict = field(default_factory=dict)
    # Why, for the user (meetings/lifecycle/endings.py): data.last_error of a failure, data.completion_detail
    # of a completion.
    data_updates: dict = field(default_factory=dict)
    # What kind of decision it is, as counted (`DECISIONS_KEY`): a bounded label, not the reason text.
    decision: str = ""


@dataclass(frozen=True)
class StartStop:
    """Run the stop flow (an active meeting past its maximum duration)."""

    meeting_id: int
    completion_reason: str


@dataclass(frozen=True)
class StopContainer:
    backend: str
    container_id: str
    running: bool
    reason: str
    instance: str = ""


@dataclass(frozen=True)
class Adopt:
    """Record a listed bot as its live meeting's container: the launch that started it died before
    recording it (its redelivery, after the broker's visibility timeout, finds the meeting moved on
    and does nothing). Unrecorded, the bot's silent death could not be judged and the stop flow
    could not stop it."""

    meeting_id: int
    backend: str
    container_id: str
    # The bot's session label as listed: the session's digest, or its uid on a bot started before
    # labels carried digests (orchestrators.base.labels_name_session tells which session it is).
    session_label: str
    instance: str = ""


@dataclass
class Plan:
    checked: int = 0
    adopt: list[Adopt] = field(default_factory=list)
    finalize: list[Finalize] = field(default_factory=list)
    start_stop: list[StartStop] = field(default_factory=list)
    containers: list[StopContainer] = field(default_factory=list)
    post_meeting: list[int] = field(default_factory=list)
    # Requested meetings whose launch task was lost (worker killed before it started the bot): the
    # launch is idempotent, so enqueueing it again is safe, and the bot still starts.
    relaunch: list[int] = field(default_factory=list)
    unknown_backends: dict[str, str] = field(default_factory=dict)
    # Instances of live meetings' bots nobody has listed for INSTANCE_UNSEEN_SECONDS: live meetings
    # on each (reported, never judged here).
    unseen_instances: dict[str, int] = field(default_factory=dict)
    # Other hosts' instances whose sweep this one asks for (sweep_instance on their queue).
    delegate: list[str] = field(default_factory=list)
    # {instance: backend} this pass listed successfully (recorded by apply(), not by a dry run).
    listed: dict[str, str] = field(default_factory=dict)
    # Bot Redis users (meetings/launching/bot_credentials.py): live sessions' users Redis lost (restarted),
    # to set again; this deployment's users of no live session, to remove. `credentials_error`:
    # why they could not be listed (nothing judged).
    credentials_restore: list[tuple[int, str]] = field(default_factory=list)
    credentials_remove: list[str] = field(default_factory=list)
    credentials_error: str = ""


def plan(meetings: list[MeetingRow], listings: dict[str, Listing], container_meeting_status: dict[int, str],
         post_meeting_pending: list[int], now: datetime, orphan_grace: timedelta, *, deadlines: bool = True) -> Plan:
    """Decide what to do. `container_meeting_status` maps the meeting ids named by the listed bots
    to their status, read *after* the listings (a meeting missing from it does not exist).
    `deadlines`: also enforce deadlines and relaunch lost launches (the global part; an instance's
    own sweep only judges its bots)."""
    result = Plan(checked=len(meetings), post_meeting=list(post_meeting_pending))
    result.unknown_backends = {name: l.error for name, l in listings.items() if not l.ok}
    by_container = {
        (name, bot.container_id): bot for name, l in listings.items() if l.ok for bot in l.bots
    }
    for m in meetings:
        decision = (deadlines and _deadline_decision(m, now)) \
            or _orphan_decision(m, listings, by_container, now, orphan_grace)
        if isinstance(decision, Finalize):
            result.finalize.append(decision)
        elif isinstance(decision, StartStop):
            result.start_stop.append(decision)
    unrecorded = {m.id for m in meetings if not m.bot_container_id}
    for name, listing in listings.items():
        if not listing.ok:
            continue
        for bot in listing.bots:
            status = container_meeting_status.get(bot.meeting_id) if bot.meeting_id else None
            if status is None or status in TERMINAL:
                why = "meeting unknown" if status is None else f"meeting {status}"
                result.containers.append(StopContainer(name, bot.container_id, bot.status.is_running, why,
                                                       listing.instance))
            elif bot.meeting_id in unrecorded and bot.labels.get(LABEL_SESSION_UID):
                result.adopt.append(Adopt(bot.meeting_id, name, bot.container_id, bot.labels[LABEL_SESSION_UID],
                                          listing.instance))
    if deadlines and all(l.ok for l in listings.values()):
        adopted = {a.meeting_id for a in result.adopt}
        deciding = {f.meeting_id for f in result.finalize}
        result.relaunch = [m.id for m in meetings
                           if m.status == S.REQUESTED and not m.bot_container_id and m.id not in adopted
                           and m.id not in deciding and now - m.updated_at >= orphan_grace]
    return result


def _container_of(m: MeetingRow) -> tuple[str, str, str] | None:
    return (m.orchestrator, m.bot_container_id, m.bot_instance) if m.bot_container_id and m.orchestrator else None


def _deadline_decision(m: MeetingRow, now: datetime):
    """What the status's deadline says to do once it passed (meetings/lifecycle/deadlines.py)."""
    deadline = DEADLINES.get(m.status)
    if deadline is None or m.deadline_at is None or m.deadline_at > now:
        return None
    if deadline.act == STOP:
        return StartStop(m.id, deadline.completion_reason())
    return Finalize(m.id, m.status, deadline.to_status, deadline.reason,
                    completion_reason=deadline.completion_reason(m.stop_reason),
                    failure_stage=m.status if deadline.act == FAIL else None, stop_container=_container_of(m),
                    metadata={"deadline_at": m.deadline_at.isoformat()},
                    data_updates=endings.deadline_passed(m.status), decision=f"deadline_{m.status}")


def _orphan_decision(m: MeetingRow, listings, by_container, now: datetime, grace: timedelta):
    if not (m.bot_container_id and m.orchestrator) or now - m.updated_at < grace:
        return None
    listing = listings.get(m.orchestrator)
    if listing is None or not listing.ok:
        return None  # unknown: act on nothing
    if not m.bot_instance or m.bot_instance != listing.instance:
        return None  # a bot of another instance: no listing of ours could have seen it
    bot = by_container.get((m.orchestrator, m.bot_container_id))
    if bot is not None and bot.status.is_running:
        return None
    seen = {"container": "gone"} if bot is None else {
        "container": bot.status.value, "raw_status": bot.raw_status, "exit_code": bot.exit_code}
    if m.status == S.STOPPING:
        return Finalize(m.id, m.status, S.COMPLETED, "bot container is gone; its exit was never reported",
                        completion_reason=m.stop_reason or CompletionReason.STOPPED, metadata=seen,
                        data_updates=endings.container_gone(m.status, bot), decision=f"bot_gone_{m.status}")
    return Finalize(m.id, m.status, S.FAILED, f"bot container is gone while {m.status}",
                    failure_stage=m.status, metadata=seen, data_updates=endings.container_gone(m.status, bot),
                    decision=f"bot_gone_{m.status}")


# --- Snapshot reading -----------------------------------------------------------------------------
def snapshot_meetings(now: datetime) -> list[MeetingRow]:
    """The live meetings a sweep can act on. A scheduled meeting before its deadline is not one
    (no bot to judge, nothing due: the scheduler launches it), and users may schedule thousands
    days ahead: they stay in the database, not in every sweep's memory."""
    rows = Meeting.objects.filter(status__in=sorted(NON_TERMINAL)).exclude(
        status=S.SCHEDULED, deadline_at__gt=now).values_list(
        "id", "status", "deadline_at", "updated_at", "bot_container_id", "orchestrator", "stop_reason",
        "bot_instance")
    return [MeetingRow(*row) for row in rows]


def list_backends(names: set[str]) -> dict[str, Listing]:
    """This host's listing of each backend, with the instance it is of."""
    listings = {}
    for name in sorted(names):
        instance = ""
        try:
            backend = get_orchestrator(name)
            instance = backend.instance_id()
            listings[name] = Listing(name, tuple(backend.list()), instance=instance)
        except OrchestratorError as exc:
            listings[name] = Listing(name, None, str(exc), instance)
        except Exception as exc:  # a backend's bug must not stop the deadlines
            log.exception("sweep: listing backend %s crashed", name)
            listings[name] = Listing(name, None, f"{type(exc).__name__}: {exc}", instance)
    return listings


def backends_in_use(meetings: list[MeetingRow]) -> set[str]:
    return {m.orchestrator for m in meetings if m.orchestrator} | {settings.ORCHESTRATOR}


def statuses_of(meeting_ids: set[int]) -> dict[int, str]:
    return dict(Meeting.objects.filter(pk__in=meeting_ids).values_list("id", "status"))


def post_meeting_pending(now: datetime, grace: timedelta, limit: int = 1000) -> list[int]:
    """Terminal meetings whose post-meeting work has not run (a lost enqueue)."""
    return list(Meeting.objects.filter(status__in=sorted(TERMINAL), post_meeting_done_at__isnull=True,
                                       end_time__lt=now - grace).order_by("end_time")
                .values_list("id", flat=True)[:limit])


def live_sessions() -> set[tuple[int, str]]:
    """Every session of a live meeting: a restarted bot still connects as its launch session's user."""
    rows = MeetingSession.objects.filter(meeting__status__in=sorted(NON_TERMINAL)).values_list(
        "meeting_id", "session_uid")
    return {(meeting_id, str(uid)) for meeting_id, uid in rows}


def make_plan(now: datetime | None = None, *, deadlines: bool = True, instance: str | None = None) -> Plan:
    """The global sweep's plan (`deadlines`), or only the judgments of one local `instance`."""
    now = now or timezone.now()
    grace = timedelta(seconds=settings.ORPHAN_GRACE_SECONDS)
    users, users_error = None, ""
    if deadlines:
        # Listed before the database is read: a launch commits its session before creating its
        # user, so every user listed here has its session in the read below (never removed live).
        try:
            users = bot_credentials.listed_users()
        except redis.RedisError as exc:
            users_error = f"{type(exc).__name__}: {exc}"
    meetings = snapshot_meetings(now)
    listings = list_backends(backends_in_use(meetings))
    if instance is not None:
        listings = {name: l for name, l in listings.items() if l.instance == instance}
    named = {bot.meeting_id for l in listings.values() if l.ok for bot in l.bots if bot.meeting_id}
    result = plan(meetings, listings, statuses_of(named), post_meeting_pending(now, grace) if deadlines else [],
                  now, grace, deadlines=deadlines)
    result.listed = instances.listed(listings)
    if users is not None:
        result.credentials_restore, result.credentials_remove = bot_credentials.reconcile(users, live_sessions())
    result.credentials_error = users_error
    if deadlines:
        known = instances.last_listed()
        result.unseen_instances = instances.unseen(meetings, set(result.listed), known, now)
        result.delegate = instances.to_sweep(meetings, set(result.listed), known, now)
    return result


# --- Applying -------------------------------------------------------------------------------------
@dataclass
class Summary:
    checked: int = 0
    adopted: int = 0
    finalized: int = 0
    stops_requested: int = 0
    containers_stopped: int = 0
    post_meeting_enqueued: int = 0
    relaunched: int = 0
    credentials_restored: int = 0
    credentials_removed: int = 0
    instances_asked: int = 0
    unseen_instances: dict[str, int] = field(default_factory=dict)
    skipped: bool = False
    errors: list[str] = field(default_factory=list)
    # Decisions carried out, by kind (`DECISION_KINDS`); counted in Redis for the metrics.
    decisions: Counter = field(default_factory=Counter)

    def as_dict(self) -> dict:
        return {**self.__dict__, "decisions": dict(self.decisions)}


# The kinds of decision a sweep counts (`botmanager_sweep_decisions_total{decision}`): a bounded set,
# so that each has its series from the first scrape on.
DECISION_KINDS = (
    *(f"deadline_{status}" for status in DEADLINES),  # the status's deadline passed (active: the stop flow)
    *(f"bot_gone_{status}" for status in sorted(NON_TERMINAL - {S.SCHEDULED})),  # its bot is gone or exited
    "adopt_bot", "stop_orphan_bot", "remove_exited_bot", "relaunch", "post_meeting",
    "credentials_removed", "credentials_restored", "ask_instance",
)
DECISIONS_KEY = "bm:metrics:sweep_decisions"


def record_decisions(decisions: Counter) -> None:
    """Add a pass's decisions to the Redis hash the metrics read (HINCRBY: every host's sweep adds
    to the same counters). Never fails the sweep."""
    if not decisions:
        return
    try:
        pipe = get_redis().pipeline(transaction=False)
        for kind, n in decisions.items():
            pipe.hincrby(DECISIONS_KEY, kind, n)
        pipe.execute()
    except redis.RedisError as exc:
        log.warning("sweep: could not count its decisions: %s", exc)


def describe_sweep(summary: Summary) -> str:
    """The pass in words, for the operator (the admin action)."""
    if summary.skipped:
        return "Another sweep was running, so this one did nothing; try again in a moment."
    done = [text.format(n=n) for n, text in (
        (summary.finalized, "ended {n} meeting(s) past their deadline or whose bot was gone"),
        (summary.stops_requested, "started the stop of {n} meeting(s) past the maximum duration"),
        (summary.adopted, "recorded {n} bot(s) their launch had not recorded"),
        (summary.containers_stopped, "stopped {n} bot(s) of ended or unknown meetings"),
        (summary.relaunched, "relaunched {n} lost launch(es)"),
        (summary.post_meeting_enqueued, "re-enqueued the post-meeting work of {n} meeting(s)"),
        (summary.credentials_removed, "removed {n} leftover bot Redis user(s)"),
        (summary.credentials_restored, "restored {n} bot Redis user(s)"),
        (summary.instances_asked, "asked {n} other backend instance(s) to sweep their bots"),
    ) if n]
    sentence = f"Checked {summary.checked} live meeting(s): " + ("; ".join(done) if done else "nothing to do") + "."
    if summary.unseen_instances:
        unseen = ", ".join(f"{instance} ({n} live meeting(s))"
                           for instance, n in sorted(summary.unseen_instances.items()))
        sentence += (f" Not listed for {settings.INSTANCE_UNSEEN_SECONDS:g} s, left to the lost-instance action: "
                     f"{unseen}.")
    if summary.errors:
        sentence += f" {len(summary.errors)} error(s): " + "; ".join(summary.errors) + "."
    return sentence


def apply(p: Plan) -> Summary:
    summary = Summary(checked=p.checked)
    instances.record_listed(p.listed, timezone.now())
    summary.errors.extend(f"{name}: listing failed: {err}" for name, err in p.unknown_backends.items())
    for a in p.adopt:
        with _decision(summary, a.meeting_id):
            adopted = _adopt(a)
            summary.adopted += int(adopted)
            summary.decisions["adopt_bot"] += int(adopted)
    bots_of_ended: list[tuple[str, str]] = []
    for f in p.finalize:
        with _decision(summary, f.meeting_id):
            result = lifecycle.transition(
                f.meeting_id, f.to_status, source=TransitionSource.ORPHAN_SWEEP, reason=f.reason,
                completion_reason=f.completion_reason, failure_stage=f.failure_stage, metadata=f.metadata,
                only_from={f.from_status}, data_updates=f.data_updates or None)
            summary.finalized += int(result.applied)
            summary.decisions[f.decision or "finalize"] += int(result.applied)
            # The decision is recorded before the bot is stopped: stopped first, a cooperative bot
            # reports its own clean exit (completed/stopped) and that replaces the timeout outcome
            # (failed/joining, awaiting_admission_timeout, ...); and a meeting that moved on since
            # the snapshot (its bot became active meanwhile) keeps its bot.
            if f.stop_container and result.meeting.is_terminal:
                bots_of_ended.append(f.stop_container)
    for s in p.start_stop:
        with _decision(summary, s.meeting_id):
            result = stopping.request_stop(s.meeting_id, source=TransitionSource.ORPHAN_SWEEP,
                                           reason=DEADLINES[S.ACTIVE].reason,
                                           completion_reason=s.completion_reason, only_from={S.ACTIVE},
                                           data_updates=endings.deadline_passed(S.ACTIVE))
            summary.stops_requested += int(result.applied)
            summary.decisions[f"deadline_{S.ACTIVE}"] += int(result.applied)
    # Only now the bots: asked to stop on the orchestrator queue (SIGTERM, then SIGKILL after
    # BOT_STOP_TIMEOUT_SECONDS), never waited for here, so no bot can hold the sweep.
    for backend, container_id, instance in bots_of_ended:
        _stop(summary, backend, container_id, instance, running=True)
    for c in p.containers:
        if _stop(summary, c.backend, c.container_id, c.instance, running=c.running, remove=True):
            summary.containers_stopped += int(c.running)
            summary.decisions["stop_orphan_bot" if c.running else "remove_exited_bot"] += 1
    for meeting_id in p.post_meeting:
        post_meeting.run.delay(meeting_id)
        summary.post_meeting_enqueued += 1
        summary.decisions["post_meeting"] += 1
    for meeting_id in p.relaunch:
        launch.launch.delay(meeting_id)
        summary.relaunched += 1
        summary.decisions["relaunch"] += 1
    _credentials(summary, p)
    summary.decisions["credentials_removed"] += summary.credentials_removed
    summary.decisions["credentials_restored"] += summary.credentials_restored
    if p.unseen_instances:
        summary.unseen_instances = dict(p.unseen_instances)
        log.warning("sweep: live meetings on backend instances nobody has listed for %ss (left to the lost-instance "
                    "policy): %s", settings.INSTANCE_UNSEEN_SECONDS, p.unseen_instances)
    for instance in p.delegate:
        try:
            request_sweep(instance)
        except Exception as exc:  # the broker is unreachable: reported; the next sweep asks again
            summary.errors.append(f"could not ask instance {instance} to sweep: {exc}")
            continue
        summary.instances_asked += 1
    summary.decisions["ask_instance"] += summary.instances_asked
    summary.decisions = +summary.decisions  # only the kinds that happened
    return summary


def _credentials(summary: Summary, p: Plan) -> None:
    """Bot Redis users: leftovers removed, live sessions' lost users set again. A failure is
    reported; the next sweep judges again."""
    if p.credentials_error:
        summary.errors.append(f"bot credentials: listing failed: {p.credentials_error}")
    try:
        summary.credentials_removed = bot_credentials.remove(p.credentials_remove)
        bot_credentials.restore(p.credentials_restore)
        summary.credentials_restored = len(p.credentials_restore)
    except (redis.RedisError, bot_credentials.CredentialsError) as exc:
        summary.errors.append(f"bot credentials: {exc}")
        log.warning("sweep: bot credentials not reconciled: %s", exc)
    if p.credentials_restore:
        log.warning("sweep: set the Redis users of %d live bot sessions that had none (Redis lost them, or a "
                    "restarted bot registered a new session)", len(p.credentials_restore))


def _session_labelled(meeting_id: int, label: str) -> int | None:
    """The row id of the meeting's session a bot's label names. The label is a digest, not a
    lookup key: a meeting has a handful of sessions (one per bot restart), each one is compared."""
    for session_id, uid in MeetingSession.objects.filter(meeting_id=meeting_id).values_list("id", "session_uid"):
        if labels_name_session({LABEL_SESSION_UID: label}, uid):
            return session_id
    return None


def _adopt(a: Adopt) -> bool:
    """Record the bot under the meeting's row lock, if the meeting is still live, still has no
    container and the bot runs one of its sessions. Its orphan grace starts now (`updated_at`)."""
    with transaction.atomic():
        meeting = Meeting.objects.select_for_update().get(pk=a.meeting_id)
        if meeting.bot_container_id or meeting.is_terminal:
            return False
        session_id = _session_labelled(meeting.id, a.session_label)
        if session_id is None:
            return False
        meeting.bot_container_id = a.container_id
        meeting.orchestrator = a.backend
        meeting.bot_instance = a.instance
        meeting.save(update_fields=["bot_container_id", "orchestrator", "bot_instance", "updated_at"])
        MeetingSession.objects.filter(pk=session_id).update(instance=a.instance)
        if meeting.status == S.STOPPING:
            stopping.bot_recorded_while_stopping(meeting)
    # Also reached when the sweep lists a bot its launch is still recording (same container id:
    # harmless).
    log.warning("sweep: meeting %s had no recorded bot; adopted %s on %s (its launch died after starting it, "
                "or is still recording it)", a.meeting_id, a.container_id, a.backend)
    return True


@contextmanager
def _decision(summary: Summary, meeting_id: int):
    """One decision failing (the meeting was deleted meanwhile, a database error) must not keep
    the sweep from the others: it is reported, and the next sweep decides again."""
    try:
        yield
    except SoftTimeLimitExceeded:
        raise
    except Meeting.DoesNotExist:
        log.info("sweep: meeting %s no longer exists; nothing to do", meeting_id)
    except Exception as exc:
        log.exception("sweep: decision on meeting %s failed", meeting_id)
        summary.errors.append(f"meeting {meeting_id}: {type(exc).__name__}: {exc}")


def _stop(summary: Summary, backend: str, container_id: str, instance: str, *, running: bool,
          remove: bool = False) -> bool:
    """Hand the bot to its instance's orchestrator queue: a running one is terminated (then killed,
    then removed when `remove`); an exited one is removed at once by the kill step."""
    try:
        if running:
            bot_control.stop_bot(backend, container_id, instance, remove=remove)
        elif remove:
            bot_control.kill_bot(backend, container_id, instance, remove=True)
    except SoftTimeLimitExceeded:
        raise
    except Exception as exc:  # the broker is unreachable: reported; the next sweep asks again
        summary.errors.append(f"{backend}: could not request the stop of {container_id}: {exc}")
        log.warning("sweep: could not request the stop of %s on %s: %s", container_id, backend, exc)
        return False
    return True


def sweep(dry_run: bool = False) -> tuple[Plan, Summary]:
    """One sweep pass (the beat's): deadlines, lost work, the bots this host sees, and a request to
    every other known instance to sweep its own bots. At most one at a time across all hosts
    (PostgreSQL advisory lock)."""
    return _locked([SWEEP_LOCK_KEY], lambda: make_plan(), dry_run)


def sweep_instance(instance: str, dry_run: bool = False) -> tuple[Plan, Summary]:
    """Judge the bots of one backend instance this host runs (asked by another host's sweep, on
    this instance's queue). One at a time per instance."""
    return _locked([SWEEP_LOCK_KEY, instances.lock_key(instance)],
                   lambda: make_plan(deadlines=False, instance=instance), dry_run)


# The beat's sweep, alone on its queue: no storm of other work can delay or expire it.
@task(name="meetings.sweep", queue=SWEEP, timed=True)
def periodic_sweep() -> dict:
    _plan, summary = sweep()
    return summary.as_dict()


# Sent to the instance's own sweep queue (`request_sweep`): only its host can list its bots.
@task(name="meetings.sweep_instance", queue=SWEEP)
def instance_sweep(instance: str) -> dict:
    _plan, summary = sweep_instance(instance)
    return summary.as_dict()


def request_sweep(instance: str) -> None:
    """`meetings.sweep_instance` on the instance's own sweep queue; dropped if it waited longer than
    one interval (its host is down: the next sweep asks again, and the instance shows as unseen)."""
    instance_sweep.apply_async((instance,), queue=instance_queue(SWEEP, instance),
                               expires=settings.ORPHAN_SWEEP_INTERVAL_SECONDS)


def _locked(key: list[int], make, dry_run: bool) -> tuple[Plan, Summary]:
    placeholders = ", ".join(["%s"] * len(key))
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT pg_try_advisory_lock({placeholders})", key)
        if not cursor.fetchone()[0]:
            log.info("sweep: another sweep is running; skipped")
            return Plan(), Summary(skipped=True)
    try:
        p = make()
        summary = Summary(checked=p.checked) if dry_run else apply(p)
        if not dry_run:
            record_decisions(summary.decisions)
    finally:
        with connection.cursor() as cursor:
            cursor.execute(f"SELECT pg_advisory_unlock({placeholders})", key)
    log.info("sweep: %s", summary.as_dict())
    return p, summary
