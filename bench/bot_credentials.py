"""What a bot's own Redis user costs (meetings/launching/bot_credentials.py): its creation at launch (one
ACL SETUSER) beside a PING round trip on the same connection, its removal, and the sweep's part
(one ACL USERS and the comparison) with many live bots. The callback path does not touch it.

    python -m bench.bot_credentials [--users 2000]
"""
from __future__ import annotations

import argparse
import time
import uuid

from bench import common


def _timed(fn, n: int) -> list[float]:
    out = []
    for i in range(n):
        started = time.perf_counter()
        fn(i)
        out.append(time.perf_counter() - started)
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=2000)
    args = parser.parse_args(argv)
    common.setup()
    from common.redis_client import get_redis
    from meetings.launching import bot_credentials

    redis = get_redis()
    sessions = [(10**6 + i, str(uuid.uuid4())) for i in range(args.users)]
    bot_credentials.server_version()  # once per process, not per launch
    ping = _timed(lambda i: redis.ping(), args.users)
    create = _timed(lambda i: bot_credentials.create(*sessions[i]), args.users)
    started = time.perf_counter()
    listed = bot_credentials.listed_users()
    restore, remove = bot_credentials.reconcile(listed, set(sessions))
    sweep_s = time.perf_counter() - started
    assert not restore and not remove and len(listed) == args.users
    delete = _timed(lambda i: bot_credentials.remove_for(*sessions[i][:1], [sessions[i][1]]), args.users)

    def ms(values, p):
        return round(common.percentile(values, p) * 1000, 3)

    figures = {"users": args.users, "ping_p50_ms": ms(ping, 50), "create_p50_ms": ms(create, 50),
               "create_p99_ms": ms(create, 99), "remove_p50_ms": ms(delete, 50),
               "sweep_list_and_compare_ms": round(sweep_s * 1000, 1)}
    common.print_table("bot_credentials: a bot's own Redis user", [
        ("PING round trip p50", figures["ping_p50_ms"], "ms"),
        ("create (ACL SETUSER) p50 / p99", figures["create_p50_ms"], figures["create_p99_ms"], "ms"),
        ("remove (ACL DELUSER) p50", figures["remove_p50_ms"], "ms"),
        (f"sweep: ACL USERS + compare, {args.users} users", figures["sweep_list_and_compare_ms"], "ms"),
    ])
    common.save("bot_credentials", figures)
    return figures


if __name__ == "__main__":
    main()
