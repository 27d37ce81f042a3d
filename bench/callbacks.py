"""Bot status callbacks per second and their latency, against gunicorn on real PostgreSQL.

N meetings (each with a current bot session) are walked requested → joining → awaiting_admission
→ active by 3·N callbacks, one phase after another, 32 requests in flight (a new connection per
request, as bots send them; gunicorn's sync workers close it anyway) from a single-threaded
non-blocking client that costs little CPU on the shared cores. Printed: callbacks/s over the
three phases, p50/p99 latency as the client sees it, SQL queries per callback (the same view run
in this process, statements counted), the CPU time the gunicorn workers and their PostgreSQL
backends spent per callback (independent of other load on the machine, hence a CPU-bound ceiling
for 2 idle cores), and the memory (RSS) of each gunicorn worker and of the Celery worker after the
run (`bench/memory` folded in here).

    python -m bench.callbacks [--meetings 2000] [--concurrency 32] [--web-workers N] [--keep-alive]

--keep-alive: each of the `concurrency` clients sends its callbacks one after another on one
persistent connection (HTTP/1.1 keep-alive), as a bot's HTTP client with a connection pool does.

--web-workers defaults to WEB_CONCURRENCY (2), what `make run` and the compose file run: on 2 cores
the callback path is CPU-bound, and more workers than cores only add context switches.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import selectors
import socket
import time
from pathlib import Path

from bench import common

PHASES = ("joining", "awaiting_admission", "started")


def queries_per_callback() -> dict[str, int]:
    """SQL statements per callback, counted on a second meeting: the first one's callbacks
    prepare the statements (a PREPARE once per database session, see common/compiled.py)."""
    from django.test import Client

    from meetings.models import MeetingSession

    ids = common.bulk_meetings(2, "requested", prefix="bench-q", with_sessions=True)
    client, counts = Client(), {}
    for meeting_id in ids:
        uid = str(MeetingSession.objects.get(meeting_id=meeting_id).session_uid)
        for name in PHASES:
            with common.count_queries() as counted:
                response = client.post(f"/bots/internal/callback/{name}", {"connection_id": uid},
                                       content_type="application/json")
            assert response.status_code == 200, response.content
            counts[name] = counted["n"]
    return counts


def _requests(port: int, name: str, uids: list[str], *, keep_alive: bool) -> list[bytes]:
    """The callback requests as bytes, last one first (popped from the end)."""
    path = f"/bots/internal/callback/{name}"
    close = "" if keep_alive else "Connection: close\r\n"
    requests = []
    for uid in uids:
        body = json.dumps({"connection_id": uid}).encode()
        requests.append(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
                        f"Content-Length: {len(body)}\r\n{close}\r\n".encode() + body)
    requests.reverse()
    return requests


def _ready(selector) -> list:
    ready = selector.select(timeout=60)
    if not ready:
        raise RuntimeError(f"{len(selector.get_map())} callbacks got no answer within 60 s")
    return ready


def run_phase_keep_alive(port: int, name: str, uids: list[str], concurrency: int) -> tuple[list[float], int, float]:
    """As run_phase, but `concurrency` persistent connections each send their next request when
    the previous answer is complete (Content-Length framed)."""
    requests = _requests(port, name, uids, keep_alive=True)
    latencies: list[float] = []
    errors = 0
    selector = selectors.DefaultSelector()

    def send_next(sock, state) -> None:
        state.update(response=bytearray(), started=time.perf_counter())
        sock.sendall(requests.pop())
        selector.register(sock, selectors.EVENT_READ, state)

    started = time.perf_counter()
    for _ in range(min(concurrency, len(requests))):
        sock = socket.create_connection(("127.0.0.1", port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        send_next(sock, {})
    while selector.get_map():
        for key, _events in _ready(selector):
            sock, state = key.fileobj, key.data
            chunk = sock.recv(65536)
            if not chunk:
                raise RuntimeError("the server closed a keep-alive connection")
            state["response"] += chunk
            head, sep, body = bytes(state["response"]).partition(b"\r\n\r\n")
            if not sep:
                continue
            length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                           if line.lower().startswith(b"content-length:")), 0)
            if len(body) < length:
                continue
            latencies.append(time.perf_counter() - state["started"])
            errors += not head.startswith(b"HTTP/1.1 200 ")
            selector.unregister(sock)
            if requests:
                send_next(sock, state)
            else:
                sock.close()
    return latencies, errors, time.perf_counter() - started


def run_phase(port: int, name: str, uids: list[str], concurrency: int) -> tuple[list[float], int, float]:
    """POST one callback per uid, `concurrency` requests in flight, each on a new connection.

    One thread drives non-blocking sockets with pre-built request bytes: the load generator shares
    the 2 cores with the server, so it must cost little (≈ 0.1 ms of CPU per request; a thread per
    connection with http.client cost ≈ 0.3 ms). Returns the latencies (connect → response read),
    the number of non-200 answers and the phase's wall time.
    """
    requests = _requests(port, name, uids, keep_alive=False)
    latencies: list[float] = []
    errors = 0
    selector = selectors.DefaultSelector()

    def start_one() -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        state = {"request": requests.pop(), "response": bytearray(), "started": time.perf_counter()}
        sock.connect_ex(("127.0.0.1", port))
        selector.register(sock, selectors.EVENT_WRITE, state)

    started = time.perf_counter()
    while requests and len(selector.get_map()) < concurrency:
        start_one()
    while selector.get_map():
        for key, events in _ready(selector):
            sock, state = key.fileobj, key.data
            if events & selectors.EVENT_WRITE:
                error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if error:
                    raise OSError(error, f"connect to 127.0.0.1:{port}: {os.strerror(error)}")
                sock.sendall(state["request"])  # a few hundred bytes: one send on a fresh socket
                selector.modify(sock, selectors.EVENT_READ, state)
                continue
            try:
                chunk = sock.recv(65536)
            except ConnectionError:  # reset by the server: counted as a failed callback below
                chunk = b""
            if chunk:
                state["response"] += chunk
                continue
            # The server closed the connection: the response is complete.
            selector.unregister(sock)
            sock.close()
            latencies.append(time.perf_counter() - state["started"])
            errors += not state["response"].startswith(b"HTTP/1.1 200 ")
            if requests:
                start_one()
    return latencies, errors, time.perf_counter() - started


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


def postgres_server_cpu_seconds() -> float | None:
    """CPU time of the whole embedded PostgreSQL server so far: the postmaster, its live
    processes (backends, WAL writer, checkpointer) and the backends that already exited (the
    postmaster reaped them). Backends come and go during a run (a gevent worker opens one per
    client connection), so counting the backends alive at the start misses the work. None when
    the server is not the embedded one."""
    import psutil
    from django.conf import settings

    if not settings.EMBEDDED_POSTGRES:
        return None
    try:
        pid = int((Path(settings.RUN_DIR) / "postgres" / "postmaster.pid").read_text().split()[0])
        postmaster = psutil.Process(pid)
        times = postmaster.cpu_times()
        total = times.user + times.system + times.children_user + times.children_system
        return total + cpu_seconds([child.pid for child in postmaster.children()])
    except (OSError, ValueError, IndexError, psutil.Error):
        return None


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
    parser.add_argument("--web-workers", type=int, default=None,
                        help="gunicorn workers (default: WEB_CONCURRENCY)")
    parser.add_argument("--keep-alive", action="store_true",
                        help="persistent client connections instead of one per callback")
    args = parser.parse_args(argv)
    phase = run_phase_keep_alive if args.keep_alive else run_phase
    env = common.setup()
    from django.conf import settings

    from meetings.models import Meeting, MeetingSession

    args.web_workers = args.web_workers or settings.WEB_CONCURRENCY

    per_callback = queries_per_callback()
    ids = common.bulk_meetings(args.meetings, "requested", prefix="bench-cb", with_sessions=True)
    uids = [str(u) for u in MeetingSession.objects.filter(meeting_id__in=ids).values_list("session_uid", flat=True)]
    warm_ids = common.bulk_meetings(200, "requested", prefix="bench-warm", with_sessions=True)
    warmup = [str(u) for u in MeetingSession.objects.filter(meeting_id__in=warm_ids)
              .values_list("session_uid", flat=True)]

    probe = common.speed_probe()
    figures: dict = {"speed_probe": probe, "meetings": args.meetings, "concurrency": args.concurrency, "web_workers": args.web_workers,
                     "keep_alive": args.keep_alive,
                     "sql_queries_per_callback": per_callback}
    with common.celery_worker(env, concurrency=2) as celery, common.gunicorn(env, args.web_workers) as web:
        port = int(web.url.rsplit(":", 1)[1])
        # Warm-up on other meetings: every worker imports its code and opens its connection.
        phase(port, "joining", warmup, args.concurrency)
        # CPU actually spent per callback, whatever else runs on the machine: the gunicorn
        # workers' and their PostgreSQL backends' CPU time over the measured phases.
        measured = web.pids()[1:]
        backends = postgres_backends(common.BENCH_DB)
        server_cpu_before = (cpu_seconds(measured), cpu_seconds(backends), postgres_server_cpu_seconds())
        all_latencies, errors, wall = [], 0, 0.0
        cpu_before = resource.getrusage(resource.RUSAGE_SELF)
        for name in PHASES:
            latencies, bad, seconds = phase(port, name, uids, args.concurrency)
            figures[f"{name}_per_second"] = round(len(latencies) / seconds)
            all_latencies += latencies
            errors += bad
            wall += seconds
        cpu_after = resource.getrusage(resource.RUSAGE_SELF)
        web_cpu = cpu_seconds(measured) - server_cpu_before[0]
        server_after = postgres_server_cpu_seconds()
        if server_after is not None and server_cpu_before[2] is not None:
            db_cpu = server_after - server_cpu_before[2]
        else:  # an external server: its backends serving the bench's database
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
        ("machine speed probe", f"Python loop {probe['python_loop_2m_ms']} ms",
         f"PostgreSQL SELECT 1 round trip {probe['postgres_select_1_round_trip_us']} µs",
         "(compare runs: docs/benchmarks.md)"),
        ("RSS gunicorn worker", f"{figures['gunicorn_worker_rss_mb']} MB",
         f"(master {figures['gunicorn_master_rss_mb']} MB)"),
        ("RSS Celery worker", f"{figures['celery_main_rss_mb']} MB main",
         f"{figures['celery_pool_rss_mb']} MB pool children"),
    ])
    common.save("callbacks", figures)
    return figures


if __name__ == "__main__":
    main()
