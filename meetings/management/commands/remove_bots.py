"""`manage.py remove_bots`: stop and remove every bot of this deployment before the services go.

Run it before `docker compose down` (or after Ctrl-C of `make run` with the docker backend): a bot
left running outlives the deployment (it retries Redis forever, and holds the compose network, so
`down` cannot remove it). The bots are the ones the configured backend lists for DEPLOYMENT_NAME on
this host's engine (the deployment label; another deployment's bots are never touched). Each is
asked to stop (SIGTERM: a cooperative bot leaves its meeting and reports its exit), SIGKILLed when
it still runs after `--timeout` seconds (BOT_STOP_TIMEOUT_SECONDS), then removed. It talks to the
engine only: no worker, web or broker is needed. Exits non-zero when a bot is left.
"""
from __future__ import annotations

import time

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from orchestrators.base import OrchestratorError
from orchestrators.registry import get_orchestrator


class Command(BaseCommand):
    help = ("Stop (SIGTERM, SIGKILL after --timeout) and remove every bot of this deployment "
            "(DEPLOYMENT_NAME) on the configured backend; run it before taking the services down.")

    def add_arguments(self, parser):
        parser.add_argument("--timeout", type=float, default=None,
                            help="seconds between SIGTERM and SIGKILL (default BOT_STOP_TIMEOUT_SECONDS)")
        parser.add_argument("--dry-run", action="store_true", help="only list the bots")

    def handle(self, *args, timeout=None, dry_run=False, **options):
        timeout = settings.BOT_STOP_TIMEOUT_SECONDS if timeout is None else timeout
        try:
            backend = get_orchestrator()
            bots = backend.list()
        except OrchestratorError as exc:
            raise CommandError(f"Could not list the bots of {settings.DEPLOYMENT_NAME!r}: {exc}") from None
        self.stdout.write(f"{len(bots)} bot(s) of deployment {settings.DEPLOYMENT_NAME!r} on the "
                          f"{backend.name} backend")
        for bot in bots:
            self.stdout.write(f"  {bot.container_id[:12]}  {bot.name}  {bot.status.value}")
        if dry_run or not bots:
            return
        try:
            left = self._remove(backend, [b.container_id for b in bots], timeout)
        except OrchestratorError as exc:
            raise CommandError(f"The {backend.name} backend failed while removing bots: {exc}") from None
        if left:
            raise CommandError(f"{len(left)} bot(s) could not be removed: {', '.join(left)}")
        self.stdout.write(f"removed {len(bots)} bot(s)")

    def _remove(self, backend, ids: list[str], timeout: float) -> list[str]:
        for container_id in ids:
            backend.terminate(container_id)
        running = self._wait(backend, ids, timeout)
        for container_id in running:
            self.stdout.write(f"  {container_id[:12]} still runs after {timeout:g} s: SIGKILL")
            backend.kill(container_id)
        running = self._wait(backend, running, max(timeout, 10))
        for container_id in ids:
            if container_id not in running:
                backend.remove(container_id)
        listed = {b.container_id for b in backend.list()}
        return [c for c in ids if c in listed]

    @staticmethod
    def _wait(backend, ids: list[str], seconds: float) -> list[str]:
        """The ids still running after at most `seconds`."""
        deadline = time.monotonic() + seconds
        while True:
            running = {b.container_id for b in backend.list() if b.status.is_running}
            still = [c for c in ids if c in running]
            if not still or time.monotonic() >= deadline:
                return still
            time.sleep(0.3)
