"""The Celery queues, named by what their work waits on, and the per-instance queues.

Each task declares its queue where it is defined (`common.tasks.task`); which worker kind consumes
which queues with which pool is the deployment layout's (botmanager/workers.py). The names are on
the wire (queued messages, other hosts' workers): never rename one.
"""
from __future__ import annotations

import hashlib

# Short database work with a due time (delayed stops, finalizers, scheduled launches, redrive).
LIFECYCLE = "lifecycle"
# Calls to the orchestrator: they wait on the engine (a thread pool serves many at once).
ORCHESTRATOR = "orchestrator"
# Deliveries: they wait on users' receivers.
WEBHOOKS = "webhooks"
# Post-meeting steps have no deadline: hundreds of them after a storm of stops must not sit in the
# lifecycle pool ahead of the finalizers that do (a worker holding countdown tasks widens its
# prefetch by as many, so a shared queue would reserve them first).
POST_MEETING = "post_meeting"
# The backstop, alone on its queue: no storm of other work can delay or expire it.
SWEEP = "sweep"
QUEUES = (LIFECYCLE, ORCHESTRATOR, WEBHOOKS, POST_MEETING, SWEEP)
# The queues that have one queue per backend instance beside the shared one.
PER_INSTANCE = (ORCHESTRATOR, SWEEP)


def instance_queue(kind: str, instance: str) -> str:
    """The queue of the work that must run where a backend instance's bots are (stop, kill,
    remove; its part of the sweep): `<kind>.<12 hex>`, one per instance, consumed only by the
    workers of that instance. "" (a bot recorded before instances were) → the shared queue."""
    if not instance:
        return kind
    return f"{kind}.{hashlib.sha256(instance.encode()).hexdigest()[:12]}"
