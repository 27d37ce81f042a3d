"""Celery configuration. Values come from Django settings (the only env reader)."""
import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "botmanager.settings")

from django.conf import settings  # noqa: E402
from kombu import Exchange, Queue  # noqa: E402

from common import queues  # noqa: E402

broker_url = settings.CELERY_BROKER_URL
# Results are not used: tasks report through the database.
result_backend = None
task_ignore_result = True

task_serializer = "json"
result_serializer = "json"
accept_content = ["json"]
timezone = "UTC"
enable_utc = True

# Tasks are idempotent (they re-read the row and do nothing if the meeting moved on), so a task
# lost with a dying worker is simply redelivered.
task_acks_late = True
task_reject_on_worker_lost = True
worker_prefetch_multiplier = 1

# Countdown tasks sit unacknowledged in the broker until due; the visibility timeout must exceed
# the longest countdown or Redis redelivers them early (a duplicate, harmless but wasteful).
_longest_countdown = max(
    settings.BOT_STOP_DELAY_SECONDS,
    settings.BOT_STOP_GRACE_SECONDS,
    settings.BOT_STOP_TIMEOUT_SECONDS,
    settings.ORPHAN_SWEEP_INTERVAL_SECONDS,
)
# (Webhook retries are countdown tasks too, up to WEBHOOK_BACKOFF_MAX_SECONDS; one redelivered
# early runs at the same due time as the original: one claims the delivery, the other does
# nothing. So they do not lengthen this timeout.)
broker_transport_options = {"visibility_timeout": int(max(3600, 4 * _longest_countdown))}
broker_connection_retry_on_startup = True

# Warm shutdown first lets running tasks finish; soft shutdown then gives tasks (including
# countdown tasks held by the worker) time to be re-queued rather than lost.
worker_soft_shutdown_timeout = 10.0
worker_enable_soft_shutdown_on_idle = True

task_soft_time_limit = 60
task_time_limit = 90

# Queues by what their work waits on (common/queues.py; botmanager/workers.py has the pools that
# serve them). A worker started without `-Q` consumes all of them.
# Each queue has its own exchange and routing key: queues declared without them would all bind
# to the default exchange with the default key, and every task would reach every queue.
task_queues = [Queue(name, Exchange(name, type="direct"), routing_key=name) for name in queues.QUEUES]
task_default_queue = queues.LIFECYCLE
# Each task declares its queue where it is defined (common/tasks.py); the operator's routes
# (CELERY_TASK_ROUTES) come first, so they can move any task. Work on a bot and an instance's
# sweep are sent to that instance's own queue explicitly (`instance_queue`), which wins over both.
task_routes = (settings.CELERY_TASK_ROUTES, "common.tasks.route")

# The orphan sweep is the backstop for every deadline. `expires` drops a run that waited longer
# than one interval in its own queue (its worker was down): the next one is already due, and runs
# never pile up.
beat_schedule = {
    "orphan-sweep": {
        "task": "meetings.sweep",
        "schedule": settings.ORPHAN_SWEEP_INTERVAL_SECONDS,
        "options": {"expires": settings.ORPHAN_SWEEP_INTERVAL_SECONDS},
    },
    # Scheduled bots are launched from the database when due (meetings/launching/scheduled.py), never from a
    # far-future ETA, which a restart or a visibility timeout would lose or duplicate.
    "scheduled-launch": {
        "task": "meetings.launch_scheduled",
        "schedule": settings.SCHEDULED_LAUNCH_INTERVAL_SECONDS,
        "options": {"expires": settings.SCHEDULED_LAUNCH_INTERVAL_SECONDS},
    },
    # Webhook deliveries whose task was lost (broker or worker outage) are enqueued again.
    "webhooks-redrive": {
        "task": "webhooks.redrive",
        "schedule": settings.WEBHOOK_REDRIVE_INTERVAL_SECONDS,
        "options": {"expires": settings.WEBHOOK_REDRIVE_INTERVAL_SECONDS},
    },
    # Old transitions and finished deliveries are deleted in bounded batches (common/retention.py).
    "retention-purge": {
        "task": "common.retention_purge",
        "schedule": settings.RETENTION_INTERVAL_SECONDS,
        "options": {"expires": settings.RETENTION_INTERVAL_SECONDS},
    },
}
