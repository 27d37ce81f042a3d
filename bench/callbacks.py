"""Bot status callbacks per second and their latency, against gunicorn on real PostgreSQL.

N meetings (each with a current bot session) are walked requested → joining → awaiting_admission
→ active by 3·N callbacks, one phase after another, sent by 32 concurrent client threads (a new
connection per request: gunicorn's sync workers close it anyway). Printed: callbacks/s over the
three phases, p50/p99 latency as the client sees it, SQL queries per callback (the same view run
in this process, statements counted), the CPU time the gunicorn workers and their PostgreSQL
backends spent per callback (independent of other load on the machine, hence a CPU-bound ceiling
for 2 idle cores), and the memory (RSS) of each gunicorn worker and of the Celery worker after the
run (`bench/memory` folded in here).

    python -m bench.callbacks [--meetings 2000] [--concurrency 32] [--web-workers 4]
"""
from __future__ import annotations

import argparse
import http.client
import json
import queue
import resource
import threading
import time

from bench import common

PHASES = ("joining", "awaiting_admission", "started")


def queries_per_callback() -> dict[str, int]:
    from django.test import Client

    from meetings.models import MeetingSession

    ids = common.bulk_meetings(1, "requested", prefix="bench-q", with_sessions=True)
    uid = str(MeetingSession.objects.get(meeting_id=ids[0]).session_uid)
    client, counts = Client(), {}
    for name in PHASES:
        with common.count_queries() as counted:
            response = client.post(f"/bots/internal/callback/{name}", {"connection_id": uid},
                                   content_type="application/json")
        assert response.status_code == 200, response.content
        counts[name] = counted["n"]
    return counts


def _send(port: int, path: str, body: bytes) -> tuple[int, float]:
    started = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        response.read()
        status = response.status
    finally:
        conn.close()
    return status, time.perf_counter() - started


def run_phase(port: int, name: str, uids: list[str], concurrency: int) -> tuple[list[float], int, float]:
    work: queue.SimpleQueue = queue.SimpleQueue()
    for uid in uids:
        work.put(json.dumps({"connection_id": uid}).encode())
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    path = f"/bots/internal/callback/{name}"

    def worker():
        mine, bad = [], 0
        while True:
            try:
                body = work.get_nowait()
            except queue.Empty:
                break
            status, seconds = _send(port, path, body)
            mine.append(seconds)
            bad += status != 200
        with lock:
            latencies.extend(mine)
            errors[0] += bad

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies, errors[0], time.perf_counter() - started


def rss_mb(pids: list[int]) -> list[float]:
    import psutil

    out = []
    for pid in pids:
        try:
            out.append(round(psutil.Process(pid).memory_info().rss / 2**20, 1))
        except psutil.NoSuchProcess:
            pass
    return out


def cpu_seconds(pids: list[int]) -> float:
    import psutil

    total = 0.0
    for pid in pids:
        try:
            times = psutil.Process(pid).cpu_times()
            total += times.user + times.system
        except psutil.NoSuchProcess:
            pass
    return total


def postgres_backends(database: str) -> list[int]:
    """The server processes serving connections to `database` (their title names it)."""
    import psutil

    pids = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if cmdline.startswith("postgres:") and f" {database} " in cmdline:
            pids.append(proc.pid)
    return pids


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--meetings", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--web-workers", type=int, default=4)
    args = parser.parse_args(argv)
    env = common.setup()
    from meetings.models import Meeting, MeetingSession

    per_callback = queries_per_callback()
    ids = common.bulk_meetings(args.meetings, "requested", prefix="bench-cb", with_sessions=True)
    uids = [str(u) for u in MeetingSession.objects.filter(meeting_id__in=ids).values_list("session_uid", flat=True)]
    warm_ids = common.bulk_meetings(200, "requested", prefix="bench-warm", with_sessions=True)
    warmup = [str(u) for u in MeetingSession.objects.filter(meeting_id__in=warm_ids)
              .values_list("session_uid", flat=True)]

    figures: dict = {"meetings": args.meetings, "concurrency": args.concurrency, "web_workers": args.web_workers,
                     "sql_queries_per_callback": per_callback}
    with common.celery_worker(env, concurrency=2) as celery, common.gunicorn(env, args.web_workers) as web:
        port = int(web.url.rsplit(":", 1)[1])
        # Warm-up on other meetings: every worker imports its code and opens its connection.
        run_phase(port, "joining", warmup, args.concurrency)
        # CPU actually spent per callback, whatever else runs on the machine: the gunicorn
        # workers' and their PostgreSQL backends' CPU time over the measured phases.
        measured = web.pids()[1:]
        backends = postgres_backends(common.BENCH_DB)
        server_cpu_before = (cpu_seconds(measured), cpu_seconds(backends))
        all_latencies, errors, wall = [], 0, 0.0
        cpu_before = resource.getrusage(resource.RUSAGE_SELF)
        for name in PHASES:
            latencies, bad, seconds = run_phase(port, name, uids, args.concurrency)
            figures[f"{name}_per_second"] = round(len(latencies) / seconds)
            all_latencies += latencies
            errors += bad
            wall += seconds
        cpu_after = resource.getrusage(resource.RUSAGE_SELF)
        web_cpu = cpu_seconds(measured) - server_cpu_before[0]
        db_cpu = cpu_seconds(backends) - server_cpu_before[1]
        count = len(all_latencies)
        figures.update({
            "gunicorn_cpu_ms_per_callback": round(web_cpu / count * 1000, 2),
            "postgres_cpu_ms_per_callback": round(db_cpu / count * 1000, 2),
            "cpu_bound_ceiling_per_second_on_2_cores": round(2 / ((web_cpu + db_cpu) / count)),
            "postgres_backends_measured": len(backends),
        })
        figures.update({
            "callbacks": len(all_latencies),
            "errors": errors,
            "callbacks_per_second": round(len(all_latencies) / wall),
            "p50_ms": round(common.percentile(all_latencies, 50) * 1000, 1),
            "p99_ms": round(common.percentile(all_latencies, 99) * 1000, 1),
            "client_cpu_seconds": round((cpu_after.ru_utime + cpu_after.ru_stime)
                                        - (cpu_before.ru_utime + cpu_before.ru_stime), 1),
            "wall_seconds": round(wall, 2),
        })
        active = Meeting.objects.filter(pk__in=ids, status="active").count()
        figures["meetings_active_after"] = active
        web_pids = web.pids()
        figures["gunicorn_master_rss_mb"] = rss_mb(web_pids[:1])
        figures["gunicorn_worker_rss_mb"] = rss_mb(web_pids[1:])
        celery_pids = celery.pids()
        figures["celery_main_rss_mb"] = rss_mb(celery_pids[:1])
        figures["celery_pool_rss_mb"] = rss_mb(celery_pids[1:])
    common.print_table("callbacks: status callbacks against gunicorn + PostgreSQL", [
        ("meetings walked", args.meetings, f"({figures['callbacks']} callbacks, {errors} errors, "
                                           f"{active} active at the end)"),
        ("concurrency / gunicorn workers", args.concurrency, args.web_workers),
        ("callbacks per second", figures["callbacks_per_second"],
         "(" + ", ".join(f"{n} {figures[f'{n}_per_second']}/s" for n in PHASES) + ")"),
        ("latency p50 / p99", f"{figures['p50_ms']} ms", f"{figures['p99_ms']} ms"),
        ("SQL queries per callback", json.dumps(per_callback)),
        ("CPU per callback", f"gunicorn {figures['gunicorn_cpu_ms_per_callback']} ms",
         f"PostgreSQL {figures['postgres_cpu_ms_per_callback']} ms",
         f"-> CPU-bound ceiling on 2 idle cores ~{figures['cpu_bound_ceiling_per_second_on_2_cores']}/s"),
        ("load generator CPU", f"{figures['client_cpu_seconds']} s", "(on the same 2 cores)"),
        ("RSS gunicorn worker", f"{figures['gunicorn_worker_rss_mb']} MB",
         f"(master {figures['gunicorn_master_rss_mb']} MB)"),
        ("RSS Celery worker", f"{figures['celery_main_rss_mb']} MB main",
         f"{figures['celery_pool_rss_mb']} MB pool children"),
    ])
    common.save("callbacks", figures)
    return figures


if __name__ == "__main__":
    main()
