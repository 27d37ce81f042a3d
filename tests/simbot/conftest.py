"""Fixtures that run simbot as a real subprocess against a real callback receiver and the test
session's real Redis."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
from django.conf import settings

from tests.simbot.receiver import CallbackReceiver

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "secret-meeting-token-" + uuid.uuid4().hex  # must never appear in the bot's log
FAST = {
    "SIMBOT_STEP_SECONDS": "0.05",
    "SIMBOT_CALLBACK_RETRY_SECONDS": "3",
    "SIMBOT_DIE_AFTER_SECONDS": "0.3",
    "SIMBOT_RESTART_AFTER_SECONDS": "0.3",
}


@dataclass
class RunningBot:
    proc: subprocess.Popen
    meeting_id: int
    connection_id: str
    log_path: Path

    def wait(self, timeout: float = 10.0) -> int:
        return self.proc.wait(timeout=timeout)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def log(self) -> str:
        return self.log_path.read_text()


@pytest.fixture
def receiver():
    with CallbackReceiver() as running:
        yield running


@pytest.fixture
def meeting_id(redis_conn):
    meeting = random.randrange(10**8, 10**9)
    yield meeting
    redis_conn.delete(f"simbot:received:{meeting}")


@pytest.fixture
def launch(receiver, meeting_id, tmp_path):
    """launch(faults=..., bot_name=..., env=..., config=...) → a RunningBot."""
    bots: list[RunningBot] = []

    def _launch(*, faults: str = "", bot_name: str = "Notetaker", env: dict | None = None,
                config: dict | None = None, bot_config: str | None = None) -> RunningBot:
        connection_id = str(uuid.uuid4())
        full_config = {
            "meeting_id": meeting_id, "platform": "google_meet",
            "meetingUrl": "https://meet.google.com/abc-defg-hij", "botName": bot_name,
            "nativeMeetingId": "abc-defg-hij", "connectionId": connection_id, "language": "en",
            "task": "transcribe", "redisUrl": settings.REDIS_URL,
            "container_name": f"botmanager-bot-{meeting_id}-{connection_id[:8]}", "token": TOKEN,
            "automaticLeave": {"waitingRoomTimeout": 300000, "noOneJoinedTimeout": 120000,
                               "everyoneLeftTimeout": 60000},
            "botManagerCallbackUrl": receiver.exited_url,
            **(config or {}),
        }
        child_env = {k: v for k, v in os.environ.items() if not k.startswith("SIMBOT_")}
        child_env.update(FAST, SIMBOT_FAULTS=faults, **(env or {}))
        child_env["BOT_CONFIG"] = json.dumps(full_config) if bot_config is None else bot_config
        log_path = tmp_path / f"simbot-{len(bots)}.log"
        with log_path.open("wb") as log:
            proc = subprocess.Popen([sys.executable, "-m", "simbot"], cwd=ROOT, env=child_env,
                                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        bot = RunningBot(proc, meeting_id, connection_id, log_path)
        bots.append(bot)
        return bot

    yield _launch
    for bot in bots:
        if bot.alive():
            bot.signal(signal.SIGKILL)
            bot.wait()
        print(f"--- {bot.log_path.name} ---\n{bot.log()}")  # shown when the test fails
