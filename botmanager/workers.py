"""The Celery workers the system runs: one per kind of waiting, each with its queues and pool.

Work that waits on different things gets different queues and pools, so nothing slow can delay
what the "no meeting stays stuck" guarantee needs (each task declares its queue, common/queues.py):

| kind         | queue        | pool                      | what it runs                                  |
|--------------|--------------|---------------------------|-----------------------------------------------|
| lifecycle    | lifecycle    | prefork, CELERY_CONCURRENCY | delayed stops, finalizers, webhook redrive: short database work with a due time |
| orchestrator | orchestrator, orchestrator.<instance> | threads, CELERY_ORCHESTRATOR_CONCURRENCY | launches (any host); terminate / kill / remove of this instance's bots: waits on the engine |
| webhooks     | webhooks, post_meeting | threads, CELERY_WEBHOOK_CONCURRENCY | webhook deliveries (wait on users' receivers) and post-meeting steps: work for users after the fact, with no deadline |
| sweep        | sweep, sweep.<instance> | prefork, 1       | the orphan sweep (deadlines; the bots of this instance) only: nothing else can fill its queue |

`<instance>` is this host's backend instance (`common.queues.instance_queue`): work on a bot (stop, kill,
remove; judging it in the sweep) goes to the queue of the instance that runs it, so it reaches the
host that can see the bot, whichever host asked.

`make run` (devstack/run.py) starts one process of each; docker-compose.yml has one service
of each (`python -m botmanager.workers <kind>`), scalable on its own; `celery -A botmanager worker`
with no `-Q` still consumes every queue (a single-process setup for tests and small installs).
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "botmanager.settings")

from django.conf import settings  # noqa: E402

from common.queues import (LIFECYCLE, ORCHESTRATOR, PER_INSTANCE, POST_MEETING, SWEEP,  # noqa: E402
                           WEBHOOKS, instance_queue)

# A kind is named after the first queue it consumes.
KINDS = (LIFECYCLE, ORCHESTRATOR, WEBHOOKS, SWEEP)


@dataclass(frozen=True)
class WorkerKind:
    name: str
    queues: tuple[str, ...]
    pool: str
    concurrency: int

    def argv(self, bin_dir: str, *, loglevel: str = "INFO", hostname_suffix: str = "%h",
             extra: tuple[str, ...] = ()) -> list[str]:
        """The command line of this worker (`celery` from `bin_dir`)."""
        # --quiet under JSON logs: Celery prints its start-up banner as plain text on stdout.
        quiet = ("--quiet",) if settings.LOG_FORMAT == "json" else ()
        return [os.path.join(bin_dir, "celery"), "-A", "botmanager", *quiet, "worker", "--loglevel", loglevel,
                "--queues", ",".join(self.queues), "--pool", self.pool, "--concurrency", str(self.concurrency),
                "--hostname", f"{self.name}@{hostname_suffix}", *extra]


def local_instance() -> str:
    """The instance of this host's configured backend (ORCHESTRATOR)."""
    from orchestrators.registry import get_orchestrator

    return get_orchestrator().instance_id()


def kinds() -> list[WorkerKind]:
    """The worker kinds of this host. A worker that consumes `orchestrator` or `sweep` also consumes
    that queue's instance queue for this host (`consume_instance_queues`)."""
    return [
        WorkerKind(LIFECYCLE, (LIFECYCLE,), "prefork", settings.CELERY_CONCURRENCY),
        WorkerKind(ORCHESTRATOR, (ORCHESTRATOR,), "threads", settings.CELERY_ORCHESTRATOR_CONCURRENCY),
        WorkerKind(WEBHOOKS, (WEBHOOKS, POST_MEETING), "threads", settings.CELERY_WEBHOOK_CONCURRENCY),
        WorkerKind(SWEEP, (SWEEP,), "prefork", 1),
    ]


def consume_instance_queues(worker) -> list[str]:
    """`worker_init` (every worker, `make run`'s, compose's, the tests'): a worker that consumes
    `orchestrator` or `sweep` also consumes `orchestrator.<instance>` / `sweep.<instance>` of
    this host's backend instance, where the work on this instance's bots is sent. Returns them."""
    from kombu import Exchange, Queue

    queues = worker.app.amqp.queues
    kinds_here = [kind for kind in PER_INSTANCE if kind in queues.consume_from]
    if not kinds_here:
        return []
    instance = local_instance()  # raises when the engine cannot say: the worker must not start blind
    added = []
    for kind in kinds_here:
        name = instance_queue(kind, instance)
        queues.select_add(Queue(name, Exchange(name, type="direct"), routing_key=name))
        added.append(name)
    return added


def by_name(name: str) -> WorkerKind:
    for kind in kinds():
        if kind.name == name:
            return kind
    raise KeyError(f"no worker kind {name!r}; choose one of {', '.join(KINDS)}")


def main(argv: list[str]) -> int:
    """`python -m botmanager.workers <kind> [celery worker options]`: exec the Celery worker of that
    kind (the compose services run this, so queues and pools are configured in one place)."""
    if not argv or argv[0] not in KINDS:
        print(f"usage: python -m botmanager.workers {'|'.join(KINDS)} [celery options]", file=sys.stderr)
        return 2
    argv_ = by_name(argv[0]).argv(os.path.dirname(sys.executable), loglevel=settings.LOG_LEVEL,
                                  extra=tuple(argv[1:]))
    os.execv(argv_[0], argv_)
    return 0  # not reached


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
