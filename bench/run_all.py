"""`make bench`: every benchmark in turn on the embedded stack, each printing its figures, then a
summary against the targets. Figures are also written to .run/bench/*.json. Benchmarks are not
tests: a missed target is reported, never an exit code (this always exits 0).

    python -m bench.run_all [--quick]
"""
from __future__ import annotations

import argparse
import time
import traceback

from bench import common

TARGETS = "callbacks >= 1000/s on 2 cores; sweep <= 2 s at 10,000; POST /bots p50 <= 20 ms; " \
          "ignore-leave stop = delay + grace within 1 s; storm (200 stubborn bots): every stop -> terminal <= " \
          "delay + grace + 1 s, probe <= baseline + 1 s, bots gone <= delay + stop timeout + 2 s, no sweep skipped"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes (a smoke run)")
    args = parser.parse_args(argv)
    from bench import callbacks, post_bots, stop, storm, sweep

    quick = args.quick
    runs = [
        ("callbacks", callbacks.main, ["--meetings", "300" if quick else "3000"]),
        ("sweep", sweep.main, ["--sizes", "1000,10000" if quick else "1000,10000,50000"]),
        ("stop", stop.main, ["--bots", "5", "--batch", "5", "--ignoring", "2"] if quick else []),
        ("post_bots", post_bots.main, ["--requests", "100" if quick else "1000"]),
        ("storm", storm.main, ["--stubborn", "30", "--hook-bots", "5"] if quick else []),
    ]
    print(f"machine: {common.machine()}  date: {time.strftime('%Y-%m-%d %H:%M')}")
    results = {}
    for name, run, run_args in runs:
        started = time.monotonic()
        try:
            results[name] = run(run_args)
        except Exception:  # one broken benchmark must not hide the others' figures
            traceback.print_exc()
            print(f"!! {name} failed; continuing")
        print(f"   ({name}: {time.monotonic() - started:.0f} s)")

    print("\n== summary against the targets (" + TARGETS + ")")
    cb = results.get("callbacks")
    if cb:
        print(f"  callbacks: {cb['callbacks_per_second']}/s (target >= 1000/s), p50 {cb['p50_ms']} ms, "
              f"p99 {cb['p99_ms']} ms, {cb['sql_queries_per_callback']} queries")
        print(f"    CPU per callback: gunicorn {cb['gunicorn_cpu_ms_per_callback']} ms + PostgreSQL "
              f"{cb['postgres_cpu_ms_per_callback']} ms -> ceiling on 2 idle cores "
              f"~{cb['cpu_bound_ceiling_per_second_on_2_cores']}/s")
    sw = results.get("sweep")
    if sw:
        for n, r in sw.items():
            print(f"  sweep {int(n):,}: {r['wall_seconds']} s, {r['sql_queries']} queries, {r['listings']} listing(s)"
                  + (" (target <= 2 s)" if n == "10000" else ""))
    st = results.get("stop")
    if st:
        print(f"  stop cooperative: p50 {st['cooperative']['p50_ms']} ms, p99 {st['cooperative']['p99_ms']} ms")
        for key, r in st.items():
            if key.startswith("ignore_leave"):
                print(f"  stop ignoring leave (stop timeout {r['stop_timeout']:g} s): {r['seconds']} s vs "
                      f"delay + grace {r['delay_plus_grace']:g} s (max deviation {r['max_deviation_from_delay_plus_grace']} s)")
    pb = results.get("post_bots")
    if pb:
        print(f"  POST /bots: p50 {pb['p50_ms']} ms (target <= 20 ms), p99 {pb['p99_ms']} ms")
    sm = results.get("storm")
    if sm:
        print(f"  storm ({sm['stubborn_bots']} stubborn bots): stop -> terminal worst {sm['stop_to_terminal_worst_s']} s "
              f"(target <= {sm['bound_delay_plus_grace_plus_1_s']} s), probe worst {sm['probe_worst_s']} s (baseline "
              f"{sm['probe_baseline_s']} s + 1 s), bots gone {sm['bots_gone_after_last_stop_s']} s after the last stop "
              f"(target <= 15 s), sweeps {sm['sweeps_completed']}/{sm['sweeps_expected']} ({sm['sweeps_skipped']} skipped)")
    if cb:
        print(f"  memory after callbacks: gunicorn workers {cb['gunicorn_worker_rss_mb']} MB, Celery "
              f"{cb['celery_main_rss_mb']} MB main + {cb['celery_pool_rss_mb']} MB pool")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
