"""End-to-end fixtures: the web app on a live server, a real Celery worker in this process, the
process backend with the simulated bot, real PostgreSQL and Redis. No mocks."""
from __future__ import annotations

import pytest
import requests

from orchestrators.registry import get_orchestrator
from tests.support import close_other_connections
from tests.waiting import wait_for


@pytest.fixture
def stack(live_server, settings, tmp_path):
    """Configure the service for a live run: bots call back to the live server, stop timings are
    short, bot state lives in a temp RUN_DIR. Yields a small HTTP client for the user API."""
    from botmanager.celery import app
    from celery.contrib.testing.worker import start_worker

    settings.PUBLIC_BASE_URL = live_server.url
    settings.RUN_DIR = tmp_path
    settings.ORCHESTRATOR = "process"
    settings.PROCESS_BOT_COMMAND = ""
    settings.BOT_STOP_DELAY_SECONDS = 3
    settings.BOT_STOP_GRACE_SECONDS = 1
    settings.BOT_STOP_TIMEOUT_SECONDS = 2
    get_orchestrator.cache_clear()
    with start_worker(app, pool="threads", concurrency=4, perform_ping_check=False, shutdown_timeout=10,
                      loglevel="WARNING"):
        client = Stack(live_server.url)
        yield client
        client.stop_all_bots()
    get_orchestrator.cache_clear()
    close_other_connections()


class Stack:
    def __init__(self, base_url: str):
        from tests.factories import make_token, make_user

        self.base_url = base_url
        self.user = make_user(max_concurrent_bots=0)
        self.session = requests.Session()
        self.session.headers["X-API-Key"] = make_token(self.user)

    def call(self, method: str, path: str, **kwargs) -> requests.Response:
        response = self.session.request(method, self.base_url + path, timeout=10, **kwargs)
        assert response.status_code < 500, response.text
        return response

    def meeting(self, meeting_id: int) -> dict:
        return self.call("GET", f"/meetings/{meeting_id}").json()

    def wait_status(self, meeting_id: int, wanted: set[str] | str, timeout: float = 30) -> dict:
        wanted = {wanted} if isinstance(wanted, str) else wanted
        return wait_for(lambda: (meeting := self.meeting(meeting_id))["status"] in wanted and meeting,
                        timeout=timeout, interval=0.1, what=f"meeting {meeting_id} to be {' or '.join(sorted(wanted))}")

    def stop_all_bots(self) -> None:
        backend = get_orchestrator()
        for bot in backend.list():
            backend.stop(bot.container_id, timeout=1)
