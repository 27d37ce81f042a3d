import json

from django.core.management.base import BaseCommand

from meetings.stopping import reconcile


class Command(BaseCommand):
    help = "Run the orphan sweep once (deadlines, gone bots, orphan containers, post-meeting retries)."

    def add_arguments(self, parser):
        parser.add_argument("--dry-run", action="store_true", help="print what it would do, change nothing")

    def handle(self, *args, dry_run, **options):
        plan, summary = reconcile.sweep(dry_run=dry_run)
        if dry_run:
            for f in plan.finalize:
                self.stdout.write(f"would finalize meeting {f.meeting_id}: {f.from_status} -> {f.to_status} "
                                  f"({f.completion_reason or f.failure_stage}): {f.reason}")
            for s in plan.start_stop:
                self.stdout.write(f"would stop meeting {s.meeting_id} ({s.completion_reason})")
            for c in plan.containers:
                self.stdout.write(f"would stop and remove {c.backend} bot {c.container_id} ({c.reason})")
            for meeting_id in plan.post_meeting:
                self.stdout.write(f"would re-enqueue post-meeting work for meeting {meeting_id}")
            for meeting_id in plan.relaunch:
                self.stdout.write(f"would re-enqueue the lost launch of meeting {meeting_id}")
            for name, err in plan.unknown_backends.items():
                self.stdout.write(f"backend {name} could not be listed (nothing judged there): {err}")
            for instance in plan.delegate:
                self.stdout.write(f"would ask instance {instance} to sweep its own bots")
            for instance, n in plan.unseen_instances.items():
                self.stdout.write(f"instance {instance}: {n} live meeting(s), not listed for a while "
                                  "(manage.py lost_instances)")
            self.stdout.write(f"checked {plan.checked} live meetings (dry run: nothing changed)")
        else:
            self.stdout.write(json.dumps(summary.as_dict()))
