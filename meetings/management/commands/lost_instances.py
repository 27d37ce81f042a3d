from django.core.management.base import BaseCommand, CommandError

from meetings.stopping import instances


class Command(BaseCommand):
    help = ("List the backend instances bots run on, when each was last listed and its live meetings; "
            "--end ends the live meetings of an instance that is gone for good (the explicit lost-instance "
            "policy: nothing else judges the bots of an instance no sweep can see).")

    def add_arguments(self, parser):
        parser.add_argument("--end", metavar="INSTANCE", help="end the live meetings of this (lost) instance")

    def handle(self, *args, end=None, **options):
        rows = instances.overview()
        if end:
            if end not in {r["instance"] for r in rows}:
                raise CommandError(f"No instance {end!r}; known: {', '.join(r['instance'] for r in rows) or 'none'}.")
            ended = instances.end_meetings_of(end, by="manage.py lost_instances")
            self.stdout.write(f"ended {ended} live meeting(s) of {end}")
            return
        for r in rows:
            seen = r["last_listed_at"].isoformat() if r["last_listed_at"] else "never"
            flag = "  UNSEEN: --end it if its host is gone for good" if r["unseen"] else ""
            self.stdout.write(f"{r['instance']}  last listed {seen} by {r['listed_by'] or '-'}  "
                              f"live meetings {r['live_meetings']}{flag}")
