"""Retention: what piles up (old transitions, finished deliveries, idempotency records) is deleted
by purgers the apps register here, run by one beat job in bounded batches.

Each purger deletes at most `batch_size` rows per call, chosen by primary key through an index,
in one short transaction (`delete_rows`): never one `DELETE ... WHERE created < x` over millions of
rows, which would hold its locks and bloat the WAL for as long as it runs. A run takes one batch
of each purger in turn until none has work left or RETENTION_TIME_BUDGET_SECONDS has passed; the
next run (RETENTION_INTERVAL_SECONDS later) goes on where it stopped. Between batches it rests
(RETENTION_DUTY_CYCLE): a backlog's purge takes CPU that callbacks on the same cores need, and
nothing is lost by clearing it more slowly.

The figures of the last run and the rows deleted so far are kept in one Redis hash
(`bm:metrics:retention`), read by observability/retention_metrics.py: the job runs in a worker,
and /metrics is scraped from the web.
"""
from __future__ import annotations

import logging
import time
from typing import Callable

from django.conf import settings
from django.db import connection, models, transaction

from common import queues
from common.redis_client import get_redis
from common.tasks import task

log = logging.getLogger(__name__)

Purger = Callable[[int], int]  # (batch_size) -> rows deleted

PURGERS: dict[str, Purger] = {}

METRICS_KEY = "bm:metrics:retention"


def register(name: str, purge_batch: Purger) -> Purger:
    """Add a purger under `name` (the `kind` label of its metrics). Registering the same name again
    replaces it (an AppConfig.ready() that runs twice in tests)."""
    PURGERS[name] = purge_batch
    return purge_batch


def delete_rows(queryset, batch_size: int, before: Callable[[list], object] | None = None) -> int:
    """Delete up to `batch_size` rows of `queryset` in one short transaction; returns how many.
    `before(pks)` runs in that transaction before they go (to note what the deletion takes away).
    The ids are read first, so the DELETE names its rows by key. No order is imposed unless the
    queryset has one: sorting by key would make each batch walk again, in the key's index, past the
    entries of the rows the batches before it deleted (dead until vacuumed)."""
    with transaction.atomic():
        pks = list(queryset.values_list("pk", flat=True)[:batch_size])
        if not pks:
            return 0
        if before is not None:
            before(pks)
        _delete(queryset.model, pks)
    return len(pks)


def _delete(model, pks: list) -> None:
    """What Django's `delete()` does for these rows (the relations' on_delete, then the rows), as one
    statement per table with the keys as one array. Django's collector builds its statements 100
    keys at a time, in Python: most of a batch's time, on the same cores as the callbacks."""
    if model._meta.many_to_many or any(r.many_to_many or r.field.target_field != model._meta.pk
                                       for r in model._meta.related_objects):
        # Link tables, or a key other than the primary one referenced: Django's collector knows them.
        model._base_manager.filter(pk__in=pks).delete()
        return
    with connection.cursor() as cursor:
        for relation in model._meta.related_objects:
            related, column = relation.related_model, relation.field.column
            table = connection.ops.quote_name(related._meta.db_table)
            if relation.on_delete is models.DO_NOTHING:
                continue
            if relation.on_delete is models.SET_NULL:
                cursor.execute(f"UPDATE {table} SET {connection.ops.quote_name(column)} = NULL "
                               f"WHERE {connection.ops.quote_name(column)} = ANY(%s)", [pks])
            elif relation.on_delete is models.CASCADE:
                cursor.execute(f"SELECT {connection.ops.quote_name(related._meta.pk.column)} FROM {table} "
                               f"WHERE {connection.ops.quote_name(column)} = ANY(%s)", [pks])
                children = [row[0] for row in cursor.fetchall()]
                if children:
                    _delete(related, children)
            else:
                # PROTECT, SET_DEFAULT, ...: Django's own rules.
                model._base_manager.filter(pk__in=pks).delete()
                return
        cursor.execute(f"DELETE FROM {connection.ops.quote_name(model._meta.db_table)} "
                       f"WHERE {connection.ops.quote_name(model._meta.pk.column)} = ANY(%s)", [pks])


def run(*, batch_size: int | None = None, budget_seconds: float | None = None,
        duty_cycle: float | None = None) -> dict[str, int]:
    """One retention run: rows deleted per purger."""
    batch_size = batch_size or settings.RETENTION_BATCH_SIZE
    budget = settings.RETENTION_TIME_BUDGET_SECONDS if budget_seconds is None else budget_seconds
    duty = settings.RETENTION_DUTY_CYCLE if duty_cycle is None else duty_cycle
    started = time.monotonic()
    deleted = {name: 0 for name in PURGERS}
    busy = list(PURGERS)
    batches = 0
    while busy and time.monotonic() - started < budget:
        for name in list(busy):
            if time.monotonic() - started >= budget:
                break
            batch_started = time.monotonic()
            count = PURGERS[name](batch_size)
            batches += 1
            deleted[name] += count
            if count == 0:
                busy.remove(name)
            elif duty < 1:
                rest = (time.monotonic() - batch_started) * (1 / duty - 1)
                time.sleep(min(rest, max(0.0, budget - (time.monotonic() - started))))
    duration = time.monotonic() - started
    _record(deleted, duration, batches, finished=not busy)
    log.info("retention: deleted %s in %.2f s (%d batches%s)", deleted, duration, batches,
             "" if not busy else "; time budget reached, the next run goes on")
    return deleted


def _record(deleted: dict[str, int], duration: float, batches: int, *, finished: bool) -> None:
    try:
        pipe = get_redis().pipeline(transaction=False)
        for name, count in deleted.items():
            pipe.hincrby(METRICS_KEY, f"deleted:{name}", count)
            pipe.hset(METRICS_KEY, f"last_deleted:{name}", count)
        pipe.hset(METRICS_KEY, mapping={"last_run_ts": f"{time.time():.3f}", "last_duration_seconds": f"{duration:.6f}",
                                        "last_batches": batches, "last_finished": int(finished)})
        pipe.execute()
    except Exception:
        # The figures are a report, not the work: the rows are deleted either way.
        log.warning("retention: could not record the run's figures in Redis", exc_info=True)


@task(name="common.retention_purge", queue=queues.POST_MEETING)
def purge() -> dict[str, int]:
    return run()
