"""`python -m simbot`: run one simulated bot from the BOT_CONFIG environment variable."""
from __future__ import annotations

import json
import logging
import re
import signal
import sys

import redis

from simbot import config
from simbot.bot import SimBot
from simbot.callbacks import CallbackClient

log = logging.getLogger("simbot")
# Session uids (connectionId, the bot_commands:<uid> channel, callback bodies) are capabilities:
# any uuid in a log line is masked. Other uuids (command ids) lose nothing worth keeping.
_UUID = re.compile(r"[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}")


class _MaskUuids(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = _UUID.sub("<uuid>", message)
        if masked != message:
            record.msg, record.args = masked, None
        return True


def main() -> int:
    logging.basicConfig(stream=sys.stdout, level=logging.INFO,
                        format="%(asctime)s simbot %(levelname)s %(message)s")
    for handler in logging.getLogger().handlers:
        handler.addFilter(_MaskUuids())
    try:
        cfg = config.load()
    except config.ConfigError as exc:
        log.error("cannot start: %s", exc)
        return 2
    log.info("starting; BOT_CONFIG %s; faults %s", json.dumps(config.redacted(cfg.raw)),
             ",".join(sorted(cfg.faults)) or "none")
    client = redis.Redis.from_url(cfg.redis_url, decode_responses=True, socket_connect_timeout=5,
                                  socket_timeout=10, health_check_interval=10)
    bot = SimBot(cfg, client, CallbackClient(cfg.exited_url, cfg.callback_retry_seconds,
                                             duplicate=cfg.has("duplicate_callbacks")))
    signal.signal(signal.SIGTERM, bot.on_signal)
    signal.signal(signal.SIGINT, bot.on_signal)
    try:
        return bot.run()
    except redis.RedisError as exc:
        log.error("redis unusable at %s: %s", config.redacted(cfg.raw)["redisUrl"], exc)
        return 2


if __name__ == "__main__":
    sys.exit(main())
