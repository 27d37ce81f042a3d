"""What the per-user rate limiter costs (its budget: at most 5 % of POST /bots latency): POST /bots
against two gunicorns at once, one with the limiter on (it runs on every request, never refusing)
and one with it off, requests alternating between them (which goes first alternating too), so
both see the same load on a shared machine; and the limiter's own call, in this process.

Bot callbacks never ask the limiter (tests/test_rate_limits.py checks that they cost it no Redis
command): their figures (bench/callbacks.py) are unchanged by construction.

    python -m bench.rate_limits [--requests 400] [--web-workers 2]
"""
from __future__ import annotations

import argparse
import time

from bench import common


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=400, help="per server")
    parser.add_argument("--web-workers", type=int, default=2)
    args = parser.parse_args(argv)
    env = common.setup()
    from accounts.services import issue_token
    from common import ratelimit
    from common.redis_client import get_redis

    user = common.make_user("ratelimit-bench@example.com")
    key = issue_token(user).token

    # The limiter's call alone: one EVALSHA taking from both buckets of POST /bots.
    buckets = [ratelimit.Bucket("api", 1e6, 10**6, "requests"), ratelimit.Bucket("bots", 1e6, 10**6, "bots")]
    calls = []
    for _ in range(2000):
        started = time.perf_counter()
        assert ratelimit.take(user.pk, buckets) is None
        calls.append(time.perf_counter() - started)

    latencies: dict[str, list[float]] = {"on": [], "off": []}
    statuses: dict[str, dict[int, int]] = {"on": {}, "off": {}}
    with common.gunicorn(env, args.web_workers, extra_env=common.RATE_LIMITS["on"]) as on, \
            common.gunicorn(env, args.web_workers, extra_env=common.RATE_LIMITS["off"]) as off:
        ports = {"on": int(on.url.rsplit(":", 1)[1]), "off": int(off.url.rsplit(":", 1)[1])}
        warmup = args.requests // 10
        for i in range(args.requests + warmup):
            for n, mode in enumerate(("on", "off") if i % 2 else ("off", "on")):
                elapsed, status = common.post_bot(ports[mode], key, common.meet_id(i, 5 + (mode == "on")))
                if i >= warmup:
                    latencies[mode].append(elapsed)
                    statuses[mode][status] = statuses[mode].get(status, 0) + 1
    get_redis().flushdb()  # the launch tasks nobody ran

    def ms(values: list[float], p: float) -> float:
        return round(common.percentile(values, p) * 1000, 2)

    figures = {"requests_per_server": args.requests, "web_workers": args.web_workers, "statuses": statuses,
               **{f"{mode}_{name}_ms": ms(latencies[mode], p) for mode in ("on", "off")
                  for name, p in (("p50", 50), ("p90", 90))},
               **{f"{mode}_mean_ms": round(sum(latencies[mode]) / len(latencies[mode]) * 1000, 2)
                  for mode in ("on", "off")},
               "take_p50_ms": ms(calls, 50), "take_p99_ms": ms(calls, 99)}
    figures["p50_cost_percent"] = round((figures["on_p50_ms"] / figures["off_p50_ms"] - 1) * 100, 1)
    figures["take_share_of_off_p50_percent"] = round(figures["take_p50_ms"] / figures["off_p50_ms"] * 100, 2)
    common.print_table("rate_limits: POST /bots with and without the per-user limiter (interleaved)", [
        ("limiter on: p50 / p90", f"{figures['on_p50_ms']} ms", f"{figures['on_p90_ms']} ms",
         f"(mean {figures['on_mean_ms']} ms)"),
        ("limiter off: p50 / p90", f"{figures['off_p50_ms']} ms", f"{figures['off_p90_ms']} ms",
         f"(mean {figures['off_mean_ms']} ms)"),
        ("p50 difference", f"{figures['p50_cost_percent']} %"),
        ("the limiter's call (EVALSHA) p50 / p99", f"{figures['take_p50_ms']} ms", f"{figures['take_p99_ms']} ms",
         f"({figures['take_share_of_off_p50_percent']} % of POST /bots p50)"),
        ("statuses", statuses),
    ])
    common.save("rate_limits", figures)
    return figures


if __name__ == "__main__":
    main()
