"""Prometheus metrics at `/metrics` (prometheus-client text format).

Where each figure comes from, and why
-------------------------------------
The service runs as several processes (gunicorn workers, Celery prefork children, beat), in
compose even as several containers, and Prometheus scrapes one of them. A plain in-process
counter would show only what the scraped process saw. So:

1. **Computed from PostgreSQL on scrape** (the database is the truth; every process reading it
   agrees, and nothing is lost when a process restarts):
   - `botmanager_meetings{status}`: meetings per status (a gauge; one GROUP BY);
   - `botmanager_meeting_transitions_total{source,to_status,applied}`: every transition attempt
     the lifecycle recorded (MeetingTransition rows), applied or refused;
   - `botmanager_sweep_finalized_meetings_total{to_status}`: meetings the orphan sweep finalized
     (applied transitions by source `orphan_sweep` into a terminal status);
   - `botmanager_stop_to_terminal_seconds`: histogram of `end_time - stop_requested_at` over the
     meetings that went through `stopping` (DELETE → terminal);
   - `botmanager_meetings_past_deadline{status}`: live meetings whose deadline passed more than one
     sweep interval ago (the sweep should have acted: it must stay 0);
   - `botmanager_webhook_deliveries{status}` (pending / succeeded / failed / held; a gauge, a
     delivery moves from pending to an outcome), `botmanager_webhook_deliveries_given_up`,
     `botmanager_webhook_deliveries_held`, `botmanager_webhook_endpoints_disabled` (gauges) and
     `botmanager_webhook_attempts_total{outcome}` (every HTTP attempt: succeeded / retry /
     failed), when the `webhooks` app is installed.
   - `botmanager_meeting_status_duration_seconds{status}`: histogram of the time meetings spent in
     each status, one observation per applied transition out of it. Recounting the whole table on
     every scrape would grow with history, so this one is incremental: a Redis hash
     (`bm:metrics:status_time`) holds the buckets and the id of the last transition counted, and a
     scrape reads only the transitions after it (at most METRICS_STATUS_TIME_BATCH, older than
     METRICS_STATUS_TIME_SETTLE_SECONDS), added with a compare-and-set on that id so that two
     concurrent scrapes never count a transition twice. If Redis loses the hash, it is rebuilt from
     the table over the next scrapes (Prometheus sees a counter reset).
   These are counters derived from rows, so the retention job deleting old transitions
   (common/retention.py) lowers them (DELETE /meetings/... keeps the rows it anonymizes);
   Prometheus reads a decrease as a counter reset, which `rate()`
   tolerates. Each scrape costs one aggregate query per family (scans of the meetings and
   transitions tables: milliseconds at 10^5 rows; see docs/benchmarks.md).
2. **Worker-side events that leave no row** (sweep runs, orphan containers stopped, stops the
   sweep requested, sweep errors and the duration of the last sweep) are counted in one Redis hash
   (`bm:metrics:worker`, HINCRBY: atomic across processes and hosts) by Celery's `task_postrun`
   signal for the sweep task (`meetings.tasks.sweep`), and read on scrape. prometheus-client's multiprocess mode
   would not do here: its files are per host, and in compose the worker is not the web container.
   Every sweep pass (the beat's, an instance's, the admin's) counts its decisions by kind itself
   (`bm:metrics:sweep_decisions`, meetings/stopping/reconcile.py): `botmanager_sweep_decisions_total{decision}`.
3. **Web-side latency** (`botmanager_callback_duration_seconds{callback,code}`, a histogram timed
   by `CallbackLatencyMiddleware` around each bot callback) lives in the gunicorn processes that
   served the callbacks: prometheus-client's **multiprocess mode** (PROMETHEUS_MULTIPROC_DIR, which
   `make run` and the compose file set for gunicorn; `botmanager/gunicorn_conf.py` empties it at
   start) sums all workers' files on scrape, whichever worker answers. Without the setting (tests,
   `runserver`) it is an ordinary single-process histogram. Computing it from the database is not
   possible (the request's arrival time is not stored), and counting it in Redis would add a
   round trip to every callback.

4. **Queues** (`botmanager_queue_depth{queue}`, `botmanager_queue_oldest_task_age_seconds{queue}`)
   are read from the broker on scrape; every task message carries the time it was sent (a
   `before_task_publish` header). `botmanager_task_lateness_seconds{task}` is a histogram of how
   late the timed tasks (those declared `timed`, common/tasks.py: stop-flow countdowns, kill
   escalation, sweep) started against their ETA or send time, counted in Redis by the workers as in 2.

A collector that fails (database or Redis down) does not fail the scrape:
`botmanager_metrics_collector_up{collector}` says which one is missing.

/metrics needs `Authorization: Bearer <METRICS_TOKEN>`; without METRICS_TOKEN it answers only a
client on this host's loopback that came directly (`make run`): a request relayed by a proxy (it
carries X-Forwarded-For) comes from wherever the proxy listens, so it is refused.
Decision record: docs/decisions/0012-metrics-derived-on-scrape.md.
"""
from __future__ import annotations

import hmac
import ipaddress
import logging
import time

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from common.clientaddr import forwarded
from common.plainviews import allow_methods
from meetings.lifecycle.statuses import CALLBACK_NAMES as _CALLBACK_NAMES
from observability import retention_metrics

log = logging.getLogger(__name__)

CALLBACK_PREFIX = "/bots/internal/callback/"
# Anything but a protocol callback name is labelled "unknown" (bounded labels).
CALLBACK_NAMES = frozenset(_CALLBACK_NAMES)
CALLBACK_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
STOP_BUCKETS = (1, 2, 5, 10, 15, 20, 30, 40, 45, 60, 90, 120, 300, 600, 1800)
# From a callback's seconds in `joining` to hours `active`.
STATUS_TIME_BUCKETS = (1, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 14400, 43200, 86400)
STATUS_TIME_KEY = "bm:metrics:status_time"

REDIS_KEY = "bm:metrics:worker"

# The in-process metrics (multiprocess-backed under gunicorn). Kept out of the global REGISTRY so
# the /metrics view decides how to read them.
LOCAL_REGISTRY = CollectorRegistry(auto_describe=True)
CALLBACK_LATENCY = Histogram(
    "botmanager_callback_duration_seconds",
    "Time to handle one bot status callback in the web process, by callback and HTTP status code.",
    ["callback", "code"], buckets=CALLBACK_BUCKETS, registry=LOCAL_REGISTRY,
)


# --- Web side -------------------------------------------------------------------------------------
class CallbackLatencyMiddleware:
    """Times `/bots/internal/callback/<name>` requests (first in MIDDLEWARE: the whole stack)."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        path = request.path_info
        if not path.startswith(CALLBACK_PREFIX):
            return self.get_response(request)
        started = time.perf_counter()
        response = self.get_response(request)
        name = path[len(CALLBACK_PREFIX):]
        CALLBACK_LATENCY.labels(name if name in CALLBACK_NAMES else "unknown",
                                str(response.status_code)).observe(time.perf_counter() - started)
        return response


# --- Worker side: sweep events in Redis -------------------------------------------------------------
_sweep_started: dict[str, float] = {}


def _is_sweep(task) -> bool:
    """The global sweep's task, whose summary is counted (a task of a worker: the tasks are loaded)."""
    from meetings.tasks import sweep

    return getattr(task, "name", None) == sweep.name


def _on_task_prerun(sender=None, task_id=None, task=None, **kwargs):
    if _is_sweep(task) and task_id:
        _sweep_started[task_id] = time.monotonic()


def _on_task_postrun(sender=None, task_id=None, task=None, retval=None, state=None, **kwargs):
    if not _is_sweep(task):
        return
    started = _sweep_started.pop(task_id, None)
    duration = time.monotonic() - started if started is not None else None
    try:
        record_sweep(retval if isinstance(retval, dict) else None, duration)
    except Exception as exc:  # metrics must never fail the task
        log.warning("metrics: could not record the sweep run: %s", exc)


# The sweep summary's fields (meetings.stopping.reconcile.Summary) counted in Redis, with their metric. The
# finalized meetings are not among them: they are computed from the transitions in PostgreSQL.
SWEEP_SUMMARY_COUNTERS = {
    "containers_stopped": ("botmanager_orphan_containers_stopped",
                           "Running bot containers the sweep stopped because their meeting was over or unknown."),
    "stops_requested": ("botmanager_sweep_stops_requested",
                        "Stop flows the sweep started (active meetings past the maximum duration)."),
    "post_meeting_enqueued": ("botmanager_sweep_post_meeting_enqueued", "Post-meeting runs the sweep re-enqueued."),
}


def record_sweep(summary: dict | None, duration: float | None) -> None:
    """Count one sweep run from its summary (None: the task raised)."""
    from common.redis_client import get_redis

    pipe = get_redis().pipeline(transaction=False)
    if summary is None:
        pipe.hincrby(REDIS_KEY, "sweep_runs_failed", 1)
    elif summary.get("skipped"):
        pipe.hincrby(REDIS_KEY, "sweep_runs_skipped", 1)
    else:
        pipe.hincrby(REDIS_KEY, "sweep_runs_completed", 1)
        for field in SWEEP_SUMMARY_COUNTERS:
            pipe.hincrby(REDIS_KEY, f"sweep_{field}", int(summary.get(field) or 0))
        pipe.hincrby(REDIS_KEY, "sweep_errors", len(summary.get("errors") or ()))
        pipe.hset(REDIS_KEY, mapping={"sweep_last_checked": int(summary.get("checked") or 0),
                                      "sweep_last_success_ts": f"{time.time():.3f}"})
        if duration is not None:
            pipe.hset(REDIS_KEY, "sweep_last_duration_seconds", f"{duration:.6f}")
    pipe.execute()


# --- Queues: when each task was sent, and how late the timed ones ran --------------------------------
SENT_AT_HEADER = "botmanager_sent_at"
LATENESS_KEY = "bm:metrics:lateness"
LATENESS_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 900)


def timed_tasks() -> tuple[str, ...]:
    """The names of the tasks whose due time is a promise (declared `timed` where they are defined:
    the stop flow's countdowns, the kill escalation, and the sweep, due when beat sends it)."""
    from common.tasks import declared_tasks

    return tuple(t.name for t in declared_tasks() if t.timed)


def _on_before_publish(sender=None, headers=None, **kwargs):
    """Every task message carries when it was sent: the queues' oldest-task age and the lateness
    of tasks without an ETA are measured from it."""
    if headers is not None:
        headers.setdefault(SENT_AT_HEADER, time.time())


def due_time(eta, sent_at) -> float | None:
    """When a task was due: its ETA (countdown tasks; ISO text in a message, a datetime on a
    request), else when it was sent (beat sends the sweep at its scheduled time)."""
    from datetime import datetime

    try:
        if eta:
            return datetime.fromisoformat(eta).timestamp() if isinstance(eta, str) else eta.timestamp()
        return float(sent_at) if sent_at is not None else None
    except (TypeError, ValueError, AttributeError):
        return None


def record_lateness(task_name: str, seconds: float) -> None:
    from common.redis_client import get_redis

    seconds = max(0.0, seconds)
    pipe = get_redis().pipeline(transaction=False)
    for bound in LATENESS_BUCKETS:
        if seconds <= bound:
            pipe.hincrby(LATENESS_KEY, f"{task_name}|{bound}", 1)
    pipe.hincrby(LATENESS_KEY, f"{task_name}|count", 1)
    pipe.hincrbyfloat(LATENESS_KEY, f"{task_name}|sum", seconds)
    pipe.execute()


def _on_task_started(sender=None, task_id=None, task=None, **kwargs):
    name = getattr(task, "name", None)
    if name not in timed_tasks():
        return
    due = due_time(getattr(task.request, "eta", None), getattr(task.request, SENT_AT_HEADER, None))
    if due is None:
        return
    try:
        record_lateness(name, time.time() - due)
    except Exception as exc:  # metrics must never fail the task
        log.warning("metrics: could not record the lateness of %s: %s", name, exc)


def connect_worker_signals() -> None:
    """Called by the Celery app module: every process stamps the tasks it sends; every worker
    process counts its sweep runs and how late its timed tasks started."""
    from celery.signals import before_task_publish, task_postrun, task_prerun

    before_task_publish.connect(_on_before_publish, weak=False, dispatch_uid="observability.metrics.publish")
    task_prerun.connect(_on_task_prerun, weak=False, dispatch_uid="observability.metrics.prerun")
    task_prerun.connect(_on_task_started, weak=False, dispatch_uid="observability.metrics.lateness")
    task_postrun.connect(_on_task_postrun, weak=False, dispatch_uid="observability.metrics.postrun")


class QueueCollector:
    """Each queue's depth and the age of its oldest waiting task, read from the broker on scrape,
    and the lateness histogram of the timed tasks (kept in Redis by the workers)."""

    def collect(self):
        import json

        from common.queues import QUEUES
        from common.redis_client import get_redis

        broker = _broker()
        depth = GaugeMetricFamily("botmanager_queue_depth", "Tasks waiting in each Celery queue (not yet taken "
                                  "by a worker; countdown tasks a worker holds until due are not counted).",
                                  labels=["queue"])
        oldest = GaugeMetricFamily("botmanager_queue_oldest_task_age_seconds",
                                   "How long the oldest waiting task of each queue has waited (0: empty).",
                                   labels=["queue"])
        now = time.time()
        pipe = broker.pipeline(transaction=False)
        for queue in QUEUES:
            pipe.llen(queue)
            pipe.lindex(queue, -1)  # kombu LPUSHes and workers BRPOP: the oldest is at the right end
        answers = pipe.execute()
        for queue, length, raw in zip(QUEUES, answers[::2], answers[1::2]):
            depth.add_metric([queue], length)
            age = 0.0
            if raw:
                try:
                    headers = json.loads(raw).get("headers") or {}
                    due = due_time(headers.get("eta"), headers.get(SENT_AT_HEADER)) or now
                    age = max(0.0, now - due)
                except (ValueError, TypeError, AttributeError):
                    age = 0.0
            oldest.add_metric([queue], age)
        yield depth
        yield oldest
        raw = get_redis().hgetall(LATENESS_KEY)
        lateness = HistogramMetricFamily(
            "botmanager_task_lateness_seconds", "How late timed tasks started against their due time (the "
            "stop flow's countdowns, the kill escalation, the sweep).", labels=["task"])
        for name in timed_tasks():
            buckets = [(str(float(b)), int(raw.get(f"{name}|{b}", 0))) for b in LATENESS_BUCKETS]
            buckets.append(("+Inf", int(raw.get(f"{name}|count", 0))))
            lateness.add_metric([name], buckets, sum_value=float(raw.get(f"{name}|sum", 0)))
        yield lateness


def _broker():
    import redis
    from django.conf import settings

    global _broker_client
    if _broker_client is None or _broker_client[0] != settings.CELERY_BROKER_URL:
        _broker_client = (settings.CELERY_BROKER_URL, redis.Redis.from_url(
            settings.CELERY_BROKER_URL, socket_timeout=settings.READYZ_TIMEOUT_SECONDS,
            socket_connect_timeout=settings.READYZ_TIMEOUT_SECONDS))
    return _broker_client[1]


_broker_client = None


# --- Collectors read on scrape ----------------------------------------------------------------------
class DatabaseCollector:
    """Families computed from PostgreSQL on each scrape (see the module docstring). Each part is
    guarded on its own: a missing table costs its own families, not the others."""

    def parts(self) -> dict:
        from django.apps import apps

        parts = {"meetings": self._meetings, "transitions": self._transitions, "stops": self._stop_histogram,
                 "instances": self._instances, "deadlines": self._past_deadline, "status_time": status_time}
        if apps.is_installed("webhooks"):
            parts["webhooks"] = self._webhooks
        return parts

    @staticmethod
    def _meetings():
        from django.db.models import Count

        from meetings.lifecycle.statuses import MeetingStatus
        from meetings.models import Meeting

        by_status = dict(Meeting.objects.order_by().values_list("status").annotate(n=Count("id")))
        meetings = GaugeMetricFamily("botmanager_meetings", "Meetings by current status.", labels=["status"])
        for status in MeetingStatus.values:
            meetings.add_metric([status], by_status.get(status, 0))
        yield meetings

    @staticmethod
    def _transitions():
        from django.db.models import Count

        from meetings.lifecycle.statuses import TERMINAL, TransitionSource
        from meetings.models import MeetingTransition

        transitions = CounterMetricFamily(
            "botmanager_meeting_transitions", "Transition attempts recorded by the lifecycle, by source, "
            "target status and whether they applied (refused attempts: applied=false).",
            labels=["source", "to_status", "applied"])
        swept = {status: 0 for status in sorted(TERMINAL)}
        rows = (MeetingTransition.objects.order_by().values_list("source", "to_status", "applied")
                .annotate(n=Count("id")))
        for source, to_status, applied, n in rows:
            transitions.add_metric([source, to_status, "true" if applied else "false"], n)
            if source == TransitionSource.ORPHAN_SWEEP and applied and to_status in TERMINAL:
                swept[to_status] += n
        yield transitions
        finalized = CounterMetricFamily(
            "botmanager_sweep_finalized_meetings", "Meetings the orphan sweep moved to a terminal status.",
            labels=["to_status"])
        for status, n in swept.items():
            finalized.add_metric([status], n)
        yield finalized

    @staticmethod
    def _past_deadline():
        from datetime import timedelta

        from django.conf import settings
        from django.db.models import Count
        from django.utils import timezone

        from meetings.lifecycle.statuses import NON_TERMINAL, MeetingStatus
        from meetings.models import Meeting

        cutoff = timezone.now() - timedelta(seconds=settings.ORPHAN_SWEEP_INTERVAL_SECONDS)
        counts = dict(Meeting.objects.filter(status__in=sorted(NON_TERMINAL), deadline_at__lt=cutoff).order_by()
                      .values_list("status").annotate(n=Count("id")))
        late = GaugeMetricFamily(
            "botmanager_meetings_past_deadline", "Live meetings whose deadline passed more than one sweep interval "
            "ago: the sweep should have acted on them (anything but 0 means it is not running or not keeping up).",
            labels=["status"])
        for status in MeetingStatus.values:
            if status in NON_TERMINAL:
                late.add_metric([status], counts.get(status, 0))
        yield late

    @staticmethod
    def _instances():
        from meetings.stopping import instances

        live = GaugeMetricFamily(
            "botmanager_instance_live_meetings", "Live meetings per backend instance their bot runs on; "
            "unseen=\"true\": no sweep has listed that instance for INSTANCE_UNSEEN_SECONDS (a lost host? its "
            "meetings wait for the explicit lost-instance policy).", labels=["instance", "unseen"])
        for row in instances.overview():
            live.add_metric([row["instance"], "true" if row["unseen"] else "false"], row["live_meetings"])
        yield live

    @staticmethod
    def _stop_histogram():
        from django.db import connection

        from meetings.models import Meeting

        buckets = ", ".join(f"count(*) FILTER (WHERE d <= {float(b)})" for b in STOP_BUCKETS)
        sql = (f"SELECT {buckets}, count(*), coalesce(sum(d), 0) FROM ("
               f"SELECT extract(epoch FROM end_time - stop_requested_at)::float8 AS d "
               f"FROM {connection.ops.quote_name(Meeting._meta.db_table)} "
               f"WHERE stop_requested_at IS NOT NULL AND end_time IS NOT NULL) AS stopped")
        with connection.cursor() as cursor:
            cursor.execute(sql)
            row = cursor.fetchone()
        counts, total, total_seconds = row[:len(STOP_BUCKETS)], row[-2], row[-1]
        yield HistogramMetricFamily(
            "botmanager_stop_to_terminal_seconds",
            "From the stop request (stopping) to the terminal status, over meetings that were stopped.",
            buckets=[(str(float(b)), n) for b, n in zip(STOP_BUCKETS, counts)] + [("+Inf", total)],
            sum_value=float(total_seconds))

    @staticmethod
    def _webhooks():
        from django.apps import apps
        from django.db.models import Count

        deliveries = GaugeMetricFamily(
            "botmanager_webhook_deliveries", "Webhook deliveries (one per event) by their current status: "
            "pending (being retried), succeeded, failed (gave up).", labels=["status"])
        model = apps.get_model("webhooks", "WebhookDelivery")
        counts = dict(model.objects.order_by().values_list("status").annotate(n=Count("id")))
        for status in sorted({"pending", "succeeded", "failed", "held", *counts}):
            deliveries.add_metric([str(status)], counts.get(status, 0))
        yield deliveries
        # Alerting rules name these: a given-up delivery is an event a receiver never got, a held
        # one waits for its user to re-enable their endpoint.
        yield GaugeMetricFamily("botmanager_webhook_deliveries_given_up",
                                "Webhook deliveries given up (kept as rows; a user may redeliver them).",
                                value=counts.get("failed", 0))
        yield GaugeMetricFamily("botmanager_webhook_deliveries_held",
                                "Webhook deliveries held, not sent, while their endpoint is disabled.",
                                value=counts.get("held", 0))
        endpoint_model = apps.get_model("webhooks", "Endpoint")
        yield GaugeMetricFamily("botmanager_webhook_endpoints_disabled",
                                "Users' webhook endpoints disabled after failing for "
                                "WEBHOOK_ENDPOINT_DISABLE_AFTER_SECONDS (re-enabled by PUT /user/webhook).",
                                value=endpoint_model.objects.filter(disabled_at__isnull=False).count())
        try:
            attempt_model = apps.get_model("webhooks", "WebhookAttempt")
        except LookupError:
            return
        attempts = CounterMetricFamily(
            "botmanager_webhook_attempts", "Webhook HTTP attempts by outcome (succeeded, retry, failed).",
            labels=["outcome"])
        for outcome, n in attempt_model.objects.order_by().values_list("outcome").annotate(n=Count("id")):
            attempts.add_metric([str(outcome)], n)
        yield attempts


# Adds one batch to the hash only if nobody counted past `last_id` meanwhile (ARGV: the id read, the
# new last id, then field/increment pairs).
_STATUS_TIME_ADD = """
local current = redis.call('HGET', KEYS[1], 'last_id') or '0'
if current ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'last_id', ARGV[2])
for i = 3, #ARGV, 2 do redis.call('HINCRBYFLOAT', KEYS[1], ARGV[i], ARGV[i + 1]) end
return 1
"""


def status_time_batch(after_id: int, limit: int, settled_before) -> tuple[int | None, dict]:
    """The transitions after `after_id` (applied, created before `settled_before`; at most `limit`):
    the last id among them (None: none) and, per status left, the cumulative bucket counts, the
    count and the sum of the seconds spent in it (since the meeting's previous applied transition)."""
    from django.db import connection

    from meetings.models import Meeting, MeetingTransition

    t = connection.ops.quote_name(MeetingTransition._meta.db_table)
    m = connection.ops.quote_name(Meeting._meta.db_table)
    buckets = ", ".join(f"count(*) FILTER (WHERE d <= {float(b)})" for b in STATUS_TIME_BUCKETS)
    sql = f"""
        WITH batch AS (
            SELECT id, meeting_id, from_status, created_at FROM {t}
            WHERE id > %s AND applied AND created_at < %s ORDER BY id LIMIT %s),
        spent AS (
            SELECT b.from_status,
                   greatest(0, extract(epoch FROM b.created_at - coalesce(prev.created_at, mt.created_at)))::float8 AS d
            FROM batch b JOIN {m} mt ON mt.id = b.meeting_id
            LEFT JOIN LATERAL (SELECT p.created_at FROM {t} p WHERE p.meeting_id = b.meeting_id AND p.applied
                               AND p.id < b.id ORDER BY p.id DESC LIMIT 1) prev ON true
            WHERE b.from_status <> '')
        SELECT last.id, g.* FROM (SELECT max(id) AS id FROM batch) last LEFT JOIN (
            SELECT from_status, {buckets}, count(*), sum(d) FROM spent GROUP BY from_status) g ON true"""
    with connection.cursor() as cursor:
        cursor.execute(sql, [after_id, settled_before, limit])
        rows = cursor.fetchall()
    last_id = rows[0][0] if rows else None
    by_status = {}
    for row in rows:
        if row[1] is not None:
            by_status[row[1]] = {"buckets": row[2:2 + len(STATUS_TIME_BUCKETS)],
                                 "count": row[-2], "sum": float(row[-1] or 0)}
    return last_id, by_status


def count_status_time() -> dict:
    """Adds the next batch of transitions to the Redis hash (see the module docstring) and returns
    the hash."""
    from datetime import timedelta

    from django.conf import settings
    from django.utils import timezone

    from common.redis_client import get_redis

    r = get_redis()
    after = int(r.hget(STATUS_TIME_KEY, "last_id") or 0)
    settled = timezone.now() - timedelta(seconds=settings.METRICS_STATUS_TIME_SETTLE_SECONDS)
    last_id, by_status = status_time_batch(after, settings.METRICS_STATUS_TIME_BATCH, settled)
    if last_id is not None:
        increments = []
        for status, h in by_status.items():
            for bound, n in zip(STATUS_TIME_BUCKETS, h["buckets"]):
                increments += [f"{status}|{bound}", n]
            increments += [f"{status}|count", h["count"], f"{status}|sum", repr(h["sum"])]
        # Refused when a concurrent scrape counted first: its counts are the ones read below.
        r.eval(_STATUS_TIME_ADD, 1, STATUS_TIME_KEY, after, last_id, *increments)
    return r.hgetall(STATUS_TIME_KEY)


def status_time():
    from meetings.lifecycle.statuses import NON_TERMINAL, MeetingStatus

    raw = count_status_time()
    family = HistogramMetricFamily(
        "botmanager_meeting_status_duration_seconds", "Time meetings spent in each status, observed when they "
        "left it (applied transitions).", labels=["status"])
    for status in MeetingStatus.values:
        if status not in NON_TERMINAL:
            continue
        buckets = [(str(float(b)), int(float(raw.get(f"{status}|{b}", 0)))) for b in STATUS_TIME_BUCKETS]
        buckets.append(("+Inf", int(float(raw.get(f"{status}|count", 0)))))
        family.add_metric([status], buckets, sum_value=float(raw.get(f"{status}|sum", 0)))
    yield family


class RedisCountersCollector:
    """The worker-side event counters kept in Redis by `record_sweep`."""

    COUNTERS = {
        "sweep_runs": ("botmanager_sweep_runs", "Orphan sweep runs by outcome (completed, skipped: another "
                                                "sweep held the lock, failed: the task raised)."),
        **{f"sweep_{field}": family for field, family in SWEEP_SUMMARY_COUNTERS.items()},
        "sweep_errors": ("botmanager_sweep_errors", "Errors a sweep reported (failed listings, failed stops)."),
    }

    def collect(self):
        from common.redis_client import get_redis

        raw = get_redis().hgetall(REDIS_KEY)
        runs = CounterMetricFamily("botmanager_sweep_runs", self.COUNTERS["sweep_runs"][1], labels=["outcome"])
        for outcome in ("completed", "skipped", "failed"):
            runs.add_metric([outcome], int(raw.get(f"sweep_runs_{outcome}", 0)))
        yield runs
        from meetings.stopping.reconcile import DECISION_KINDS, DECISIONS_KEY

        counted = get_redis().hgetall(DECISIONS_KEY)
        decisions = CounterMetricFamily(
            "botmanager_sweep_decisions", "Decisions the sweeps carried out, by kind: deadline_<status> (the "
            "status's deadline passed), bot_gone_<status> (its bot was gone or exited), bots stopped, adopted, "
            "relaunches, post-meeting work re-enqueued, bot Redis users, other instances asked to sweep.",
            labels=["decision"])
        for kind in sorted({*DECISION_KINDS, *counted}):
            decisions.add_metric([kind], int(counted.get(kind, 0)))
        yield decisions
        for key, (name, doc) in self.COUNTERS.items():
            if key != "sweep_runs":
                yield CounterMetricFamily(name, doc, value=int(raw.get(key, 0)))
        for key, name, doc in (
            ("sweep_last_success_ts", "botmanager_sweep_last_success_timestamp_seconds",
             "Unix time the last completed sweep ended (0: none yet)."),
            ("sweep_last_duration_seconds", "botmanager_sweep_last_duration_seconds",
             "Wall time of the last completed sweep."),
            ("sweep_last_checked", "botmanager_sweep_last_checked_meetings",
             "Non-terminal meetings the last completed sweep examined (scheduled ones only once due)."),
        ):
            yield GaugeMetricFamily(name, doc, value=float(raw.get(key, 0)))


class _Guarded:
    """Runs a collector; on failure yields nothing from it and reports it down."""

    def __init__(self, parts: dict):
        self.parts = parts  # name -> function yielding metric families

    def collect(self):
        up = GaugeMetricFamily("botmanager_metrics_collector_up",
                               "1 when the collector could read its source on this scrape.", labels=["collector"])
        for name, part in self.parts.items():
            try:
                families = list(part())
            except Exception as exc:
                log.warning("metrics: the %s collector failed: %s", name, exc)
                up.add_metric([name], 0)
                continue
            up.add_metric([name], 1)
            yield from families
        yield up


def build_registry() -> CollectorRegistry:
    from django.conf import settings

    registry = CollectorRegistry(auto_describe=False)
    if settings.PROMETHEUS_MULTIPROC_DIR:
        from prometheus_client import multiprocess

        multiprocess.MultiProcessCollector(registry, path=settings.PROMETHEUS_MULTIPROC_DIR)
    else:
        registry.register(LOCAL_REGISTRY)
    registry.register(_Guarded({**DatabaseCollector().parts(), "redis": RedisCountersCollector().collect,
                                "queues": QueueCollector().collect, "retention": retention_metrics.collect}))
    return registry


@allow_methods("GET")
def metrics_view(request):
    from django.conf import settings
    from django.http import HttpResponse, JsonResponse

    if settings.METRICS_TOKEN:
        auth = request.headers.get("Authorization", "")
        given = auth[7:].strip() if auth.lower().startswith("bearer ") else ""
        if not hmac.compare_digest(given.encode(), settings.METRICS_TOKEN.encode()):
            return JsonResponse({"detail": "Missing or invalid metrics token."}, status=403)
    elif not _direct_from_loopback(request):
        return JsonResponse({"detail": "/metrics without METRICS_TOKEN answers only this host's loopback; set "
                                       "METRICS_TOKEN and scrape with `Authorization: Bearer <METRICS_TOKEN>`."},
                            status=403)
    return HttpResponse(generate_latest(build_registry()), content_type=CONTENT_TYPE_LATEST)


def _direct_from_loopback(request) -> bool:
    try:
        loopback = ipaddress.ip_address(request.META.get("REMOTE_ADDR", "").split("%")[0]).is_loopback
    except ValueError:
        return False
    return loopback and not forwarded(request)
