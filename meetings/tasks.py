"""Every Celery task of meetings, each defined (with the queue it declares) beside the work it
runs; Celery's autodiscovery imports this module. Each task re-reads the database (or asks the
backend) and is idempotent, so redelivery (acks_late) and duplicates are harmless. The names on
the wire (`meetings.*`, and the retention job `common.retention_purge` whose purgers the
apps register) never change: queued messages and other hosts hold them."""
from __future__ import annotations

from common.retention import purge as retention_purge
from meetings.launching.launch import launch as launch_bot
from meetings.launching.scheduled import launch_scheduled
from meetings.stopping.bot_control import kill as kill_bot, terminate as terminate_bot
from meetings.stopping.flow import delayed_stop, finalize_after_stop
from meetings.stopping.post_meeting import run as post_meeting
from meetings.stopping.reconcile import instance_sweep as sweep_instance, periodic_sweep as sweep

__all__ = ["launch_bot", "launch_scheduled", "delayed_stop", "finalize_after_stop", "terminate_bot", "kill_bot",
           "post_meeting", "sweep", "sweep_instance", "retention_purge"]
