"""The retention job's figures (common/retention.py keeps them in Redis: the job runs in a worker,
/metrics is scraped from the web)."""
from __future__ import annotations

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily


def collect():
    from common.redis_client import get_redis
    from common.retention import METRICS_KEY, PURGERS

    raw = get_redis().hgetall(METRICS_KEY)
    kinds = sorted(set(PURGERS) | {key.split(":", 1)[1] for key in raw if key.startswith("deleted:")})
    deleted = CounterMetricFamily("botmanager_retention_rows_deleted", "Rows the retention job deleted, by "
                                  "kind (transitions, deliveries, ...).", labels=["kind"])
    last = GaugeMetricFamily("botmanager_retention_last_run_rows_deleted", "Rows the last retention run deleted, "
                             "by kind.", labels=["kind"])
    for kind in kinds:
        deleted.add_metric([kind], int(raw.get(f"deleted:{kind}", 0)))
        last.add_metric([kind], int(raw.get(f"last_deleted:{kind}", 0)))
    yield deleted
    yield last
    for key, name, doc in (
        ("last_run_ts", "botmanager_retention_last_run_timestamp_seconds",
         "Unix time the last retention run ended (0: none yet)."),
        ("last_duration_seconds", "botmanager_retention_last_run_duration_seconds", "Wall time of the last run."),
        ("last_batches", "botmanager_retention_last_run_batches", "Batches (short transactions) of the last run."),
        ("last_finished", "botmanager_retention_last_run_finished",
         "1 when the last run deleted everything due; 0 when its time budget ended it first."),
    ):
        yield GaugeMetricFamily(name, doc, value=float(raw.get(key, 0)))
