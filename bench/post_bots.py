"""POST /bots latency with the launch excluded: gunicorn on real PostgreSQL and Redis, no Celery
worker (the launch task is enqueued on commit, as in production, and never run; the queue is
flushed afterwards). One client, sequential requests, distinct meetings of one unlimited user;
also the SQL queries of one request (the same view in this process).

    python -m bench.post_bots [--requests 500] [--web-workers 2] [--rate-limits on|off]
"""
from __future__ import annotations

import argparse

from bench import common


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--web-workers", type=int, default=2)
    parser.add_argument("--rate-limits", choices=sorted(common.RATE_LIMITS), default="on",
                        help="on: the per-user limiter runs on every request (never refusing); off: not asked")
    args = parser.parse_args(argv)
    env = common.setup()
    from rest_framework.test import APIClient

    from accounts.services import issue_token
    from common.redis_client import get_redis

    user = common.make_user("post-bench@example.com")
    key = issue_token(user).token
    client = APIClient()
    client.credentials(HTTP_X_API_KEY=key)
    with common.count_queries() as counted:
        response = client.post("/bots", {"platform": "google_meet", "native_meeting_id": common.meet_id(0, 9)},
                               format="json")
    assert response.status_code == 201, response.content
    queries = counted["n"]

    latencies, statuses = [], {}
    with common.gunicorn(env, args.web_workers, extra_env=common.RATE_LIMITS[args.rate_limits]) as web:
        port = int(web.url.rsplit(":", 1)[1])
        warmup = args.requests // 10
        for i in range(args.requests + warmup):
            elapsed, status = common.post_bot(port, key, common.meet_id(i, 3))
            if i >= warmup:
                latencies.append(elapsed)
                statuses[status] = statuses.get(status, 0) + 1
    get_redis().flushdb()  # the launch tasks nobody ran
    figures = {"requests": len(latencies), "statuses": statuses, "web_workers": args.web_workers,
               "rate_limits": args.rate_limits,
               "p50_ms": round(common.percentile(latencies, 50) * 1000, 2),
               "p99_ms": round(common.percentile(latencies, 99) * 1000, 2),
               "mean_ms": round(sum(latencies) / len(latencies) * 1000, 2), "sql_queries": queries}
    common.print_table("post_bots: POST /bots, launch excluded (sequential)", [
        ("requests", figures["requests"], f"statuses {statuses}"),
        ("latency p50 / p99", f"{figures['p50_ms']} ms", f"{figures['p99_ms']} ms", f"(mean {figures['mean_ms']} ms)"),
        ("SQL queries per request", queries),
    ])
    common.save("post_bots", figures)
    return figures


if __name__ == "__main__":
    main()
