"""The Celery workers the system runs: one per kind of waiting, each with its queues and pool.

Work that waits on different things gets different queues and pools, so nothing slow can delay
what the "no meeting stays stuck" guarantee needs (celeryconfig.py routes each task):

| kind         | queue        | pool                      | what it runs                                  |
|--------------|--------------|---------------------------|-----------------------------------------------|
| lifecycle    | lifecycle    | prefork, CELERY_CONCURRENCY | delayed stops, finalizers, post-meeting, webhook redrive: short database work |
| orchestrator | orchestrator | threads, CELERY_ORCHESTRATOR_CONCURRENCY | launches, terminate / kill / remove of bots: waits on the engine |
| webhooks     | webhooks     | threads, CELERY_WEBHOOK_CONCURRENCY | webhook deliveries: waits on users' receivers |
| sweep        | sweep        | prefork, 1                | the orphan sweep only: nothing else can fill its queue |

`make run` (botmanager/runstack.py) starts one process of each; docker-compose.yml has one service
of each (`python -m botmanager.workers <kind>`), scalable on its own; `celery -A botmanager worker`
with no `-Q` still consumes every queue (a single-process setup for tests and small installs).
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "botmanager.settings")

from django.conf import settings  # noqa: E402

LIFECYCLE = "lifecycle"
ORCHESTRATOR = "orchestrator"
WEBHOOKS = "webhooks"
SWEEP = "sweep"
QUEUES = (LIFECYCLE, ORCHESTRATOR, WEBHOOKS, SWEEP)


@dataclass(frozen=True)
class WorkerKind:
    name: str
    queues: tuple[str, ...]
    pool: str
    concurrency: int

    def argv(self, bin_dir: str, *, loglevel: str = "INFO", hostname_suffix: str = "%h",
             extra: tuple[str, ...] = ()) -> list[str]:
        """The command line of this worker (`celery` from `bin_dir`)."""
        return [os.path.join(bin_dir, "celery"), "-A", "botmanager", "worker", "--loglevel", loglevel,
                "--queues", ",".join(self.queues), "--pool", self.pool, "--concurrency", str(self.concurrency),
                "--hostname", f"{self.name}@{hostname_suffix}", *extra]


def kinds() -> list[WorkerKind]:
    return [
        WorkerKind(LIFECYCLE, (LIFECYCLE,), "prefork", settings.CELERY_CONCURRENCY),
        WorkerKind(ORCHESTRATOR, (ORCHESTRATOR,), "threads", settings.CELERY_ORCHESTRATOR_CONCURRENCY),
        WorkerKind(WEBHOOKS, (WEBHOOKS,), "threads", settings.CELERY_WEBHOOK_CONCURRENCY),
        WorkerKind(SWEEP, (SWEEP,), "prefork", 1),
    ]


def by_name(name: str) -> WorkerKind:
    for kind in kinds():
        if kind.name == name:
            return kind
    raise KeyError(f"no worker kind {name!r}; choose one of {', '.join(k.name for k in kinds())}")


def main(argv: list[str]) -> int:
    """`python -m botmanager.workers <kind> [celery worker options]`: exec the Celery worker of that
    kind (the compose services run this, so queues and pools are configured in one place)."""
    if not argv or argv[0] not in {k.name for k in kinds()}:
        print(f"usage: python -m botmanager.workers {'|'.join(k.name for k in kinds())} [celery options]",
              file=sys.stderr)
        return 2
    argv_ = by_name(argv[0]).argv(os.path.dirname(sys.executable), loglevel=settings.LOG_LEVEL,
                                  extra=tuple(argv[1:]))
    os.execv(argv_[0], argv_)
    return 0  # not reached


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
