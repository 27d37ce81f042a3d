"""The web side under real gunicorn with several worker processes: callback latency summed over all
workers whichever one answers the scrape (multiprocess mode), JSON log lines on stdout, and
`/readyz` naming PostgreSQL when it is down while `/healthz` stays 200."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from django.conf import settings

from tests.factories import make_meeting, make_session, make_user

REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _database_url(name: str | None = None, port: int | None = None) -> str:
    db = settings.DATABASES["default"]
    auth = db["USER"] + (f":{db['PASSWORD']}" if db.get("PASSWORD") else "")
    return f"postgres://{auth}@{db['HOST']}:{port or db['PORT']}/{name or db['NAME']}"


class Gunicorn:
    def __init__(self, tmp_path: Path, workers: int, **env):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tmp_path / "gunicorn.log"
        self.prometheus_dir = tmp_path / "prometheus"
        base, _, _db = settings.REDIS_URL.rpartition("/")
        full_env = {**os.environ, "DATABASE_URL": _database_url(), "REDIS_URL": f"{base}/{settings.TEST_REDIS_DB}",
                    "PROMETHEUS_MULTIPROC_DIR": str(self.prometheus_dir), "LOG_FORMAT": "json",
                    "ORCHESTRATOR": "process", "RUN_DIR": str(tmp_path), "DB_CONN_MAX_AGE": "0", **env}
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [str(Path(sys.executable).with_name("gunicorn")), "-c", "python:botmanager.gunicorn_conf",
                 "botmanager.wsgi", "--bind", f"127.0.0.1:{self.port}", "--workers", str(workers),
                 "--access-logfile", "-"],
                cwd=REPO, env=full_env, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while True:
            try:
                if requests.get(self.url + "/healthz", timeout=1).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"gunicorn did not come up:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.2)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def json_lines(self) -> list[dict]:
        return [json.loads(line) for line in self.log.read_text().splitlines() if line.strip()]


@pytest.fixture
def gunicorn_factory(tmp_path):
    started = []

    def start(workers: int = 2, **env) -> Gunicorn:
        server = Gunicorn(tmp_path, workers, **env)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def _sample(text: str, name: str, **labels) -> float | None:
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return sample.value
    return None


@pytest.mark.django_db(transaction=True)
def test_callback_latency_is_summed_over_every_gunicorn_worker(gunicorn_factory):
    user = make_user()
    uids = [str(make_session(make_meeting(user)).session_uid) for _ in range(40)]
    server = gunicorn_factory(workers=2)

    def post(uid):  # a new connection each time: the two workers share the load
        return requests.post(server.url + "/bots/internal/callback/joining", json={"connection_id": uid},
                             headers={"Connection": "close"}, timeout=30).status_code

    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(post, uids)) == [200] * 40

    files = list(server.prometheus_dir.glob("histogram_*.db"))
    assert len(files) == 2, f"both workers served callbacks: {files}"
    for _ in range(6):  # whichever worker answers the scrape sees the same totals
        text = requests.get(server.url + "/metrics", headers={"Connection": "close"}, timeout=30).text
        assert _sample(text, "botmanager_callback_duration_seconds_count", callback="joining", code="200") == 40
        assert _sample(text, "botmanager_meetings", status="joining") == 40
        assert _sample(text, "botmanager_meeting_transitions_total", source="bot_callback", to_status="joining",
                       applied="true") == 40

    server.stop()
    lines = server.json_lines()
    moves = [e for e in lines if e.get("logger") == "meetings.lifecycle.transitions"]
    assert len(moves) == 40
    assert len({e["session_id"] for e in moves}) == 40
    # The uids (the bots' capabilities) appear in no log line, the access log's included.
    assert not any(uid in server.log.read_text() for uid in uids)
    assert all((e["from_status"], e["to_status"], e["source"], e["applied"]) ==
               ("requested", "joining", "bot_callback", True) for e in moves)
    assert any(e.get("logger") == "gunicorn.access" for e in lines)
    assert {e["level"] for e in lines} <= {"DEBUG", "INFO", "WARNING"}


@pytest.mark.django_db(transaction=True)
def test_clients_that_come_one_after_another_share_one_database_connection(gunicorn_factory):
    """gevent workers: a client connection that ends hands its database connection to the next
    client (bots send `Connection: close`; a new PostgreSQL connection per callback cost more than
    the callback), so sequential clients hold one, not one each until the garbage collector runs
    (they piled up to PostgreSQL's max_connections)."""
    import uuid

    from django.db import connection

    app_name = f"bm-conn-test-{uuid.uuid4().hex[:8]}"
    uids = [str(make_session(make_meeting(make_user())).session_uid) for _ in range(30)]
    server = gunicorn_factory(workers=1, DB_CONN_MAX_AGE="600", PGAPPNAME=app_name)

    def backends() -> set[int]:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pid FROM pg_stat_activity WHERE application_name = %s", [app_name])
            return {row[0] for row in cursor.fetchall()}

    seen: set[int] = set()
    for uid in uids:  # one after another, each on a new connection, as bots send them
        assert requests.post(server.url + "/bots/internal/callback/joining", json={"connection_id": uid},
                             headers={"Connection": "close"}, timeout=30).status_code == 200
        seen |= backends()

    assert len(seen) == 1
    assert len(backends()) == 1


def test_readyz_names_the_database_when_postgresql_is_down_and_healthz_stays_up(gunicorn_factory):
    server = gunicorn_factory(workers=1, DATABASE_URL=_database_url(port=_free_port()))

    assert requests.get(server.url + "/healthz", timeout=10).status_code == 200
    response = requests.get(server.url + "/readyz", timeout=30)
    body = response.json()
    assert response.status_code == 503, body
    assert body["failed"] == ["database"]
    assert body["checks"]["redis"]["ok"] and body["checks"]["backend"]["ok"]
    # /metrics still answers: the database families are reported down, the rest is served.
    text = requests.get(server.url + "/metrics", timeout=30).text
    assert _sample(text, "botmanager_metrics_collector_up", collector="meetings") == 0
    assert _sample(text, "botmanager_metrics_collector_up", collector="redis") == 1
