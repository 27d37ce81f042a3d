"""The launch of a bot: what the `launch_bot` task does for one meeting (claim a session, build its
BOT_CONFIG and credentials, ask the backend to start it, record it), timed in this process on real
PostgreSQL and Redis with the process backend and the simulated bot. Sequential, distinct
`requested` meetings; every bot started is killed and removed at the end.

The time is that of `meetings.launching.launch.launch()` returning: the bot process is started, not yet
joined (its start-up is the bot's, not the manager's).

    python -m bench.launch [--bots 100]
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from bench import common


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bots", type=int, default=100)
    args = parser.parse_args(argv)
    env = common.setup()
    from django.conf import settings

    settings.ORCHESTRATOR = "process"
    settings.RUN_DIR = Path(env["RUN_DIR"])
    from meetings.launching import launch
    from orchestrators.registry import get_orchestrator

    warmup = max(1, args.bots // 10)
    ids = common.bulk_meetings(args.bots + warmup, "requested", prefix=f"launch-{time.time_ns()}")
    backend = get_orchestrator()
    latencies, failed = [], 0
    try:
        for n, meeting_id in enumerate(ids):
            started = time.perf_counter()
            container_id = launch.launch(meeting_id)
            elapsed = time.perf_counter() - started
            if container_id is None:
                failed += 1
            elif n >= warmup:
                latencies.append(elapsed)
    finally:
        for info in backend.list():
            backend.kill(info.container_id)
        for info in backend.list():
            backend.remove(info.container_id)
    figures = {"bots": len(latencies), "failed": failed,
               "p50_ms": round(common.percentile(latencies, 50) * 1000, 2),
               "p99_ms": round(common.percentile(latencies, 99) * 1000, 2),
               "mean_ms": round(sum(latencies) / len(latencies) * 1000, 2)}
    common.print_table("launch: meetings.launching.launch.launch() with the process backend (sequential)", [
        ("bots launched", figures["bots"], f"failed {failed}"),
        ("latency p50 / p99", f"{figures['p50_ms']} ms", f"{figures['p99_ms']} ms", f"(mean {figures['mean_ms']} ms)"),
    ])
    common.save("launch", figures)
    return figures


if __name__ == "__main__":
    main()
