"""A Celery worker survives a Redis restart while it holds a countdown task, resumes consuming, and
runs the held task on time (patches/broker_outage.py). On celery 5.7.0 / kombu 5.7.0 without it,
the worker dies at once with AttributeError("'NoneType' object has no attribute 'hostname'").

Real parts: a Redis server of this test's own (append-only file, so its data survives the kill,
as the embedded one's does), the real worker (`celery -A botmanager worker`) on the test database.
"""
from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from celery import Celery
from django.utils import timezone

from devstack import servers as devstack
from meetings.lifecycle.statuses import MeetingStatus
from meetings.models import Meeting
from tests.factories import make_meeting
from tests.support import close_other_connections, stack_env
from tests.waiting import wait_for

pytestmark = pytest.mark.django_db(transaction=True)
REPO = Path(__file__).resolve().parents[1]
COUNTDOWN = 10.0
OUTAGE = 3.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RedisServer:
    def __init__(self, data_dir: Path, port: int):
        self.data_dir, self.port, self.proc = data_dir, port, None

    def start(self) -> None:
        log = (self.data_dir / "redis.log").open("ab")
        self.proc = subprocess.Popen([devstack._redis_server_binary(), "--port", str(self.port), "--bind", "127.0.0.1",
                                      "--dir", str(self.data_dir), "--appendonly", "yes", "--appendfsync", "always",
                                      "--save", ""], stdout=log, stderr=log)
        wait_for(lambda: devstack.port_open(self.port), timeout=10, what="Redis to listen")

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()


@pytest.fixture
def outage(tmp_path):
    redis = RedisServer(tmp_path, _free_port())
    redis.start()
    url = f"redis://127.0.0.1:{redis.port}/0"
    env = stack_env(tmp_path, REDIS_URL=url, CELERY_BROKER_URL=url, LOG_LEVEL="INFO")
    log = (tmp_path / "worker.log").open("ab")
    worker = subprocess.Popen([str(Path(sys.executable).with_name("celery")), "-A", "botmanager", "worker",
                               "--queues", "lifecycle", "--pool", "prefork", "--concurrency", "1",
                               "--hostname", f"outage-{redis.port}@%h", "--without-gossip", "--without-mingle"],
                              cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    # Not the current app: shared tasks (`.delay`) of later tests must not reach this Redis.
    sender = Celery("outage-test", broker=url, set_as_current=False)
    wait_for(lambda: sender.control.ping(destination=[f"outage-{redis.port}@{socket.gethostname()}"], timeout=1),
             timeout=30, what="the worker to answer")
    yield redis, worker, sender, tmp_path / "worker.log"
    if worker.poll() is None:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(timeout=20)
        except subprocess.TimeoutExpired:
            worker.kill()
    if redis.proc.poll() is None:
        redis.kill()
    close_other_connections()


def _post_meeting(sender: Celery, meeting_id: int, countdown: float | None = None) -> None:
    sender.send_task("meetings.post_meeting", args=[meeting_id], countdown=countdown, queue="lifecycle",
                     exchange="lifecycle", routing_key="lifecycle")


def _ended_meeting() -> Meeting:
    return make_meeting(status=MeetingStatus.COMPLETED, end_time=timezone.now())


def test_the_worker_survives_a_redis_restart_and_runs_the_countdown_task_it_held_on_time(outage):
    redis, worker, sender, log = outage
    held, later = _ended_meeting(), _ended_meeting()
    sent_at = time.monotonic()
    _post_meeting(sender, held.id, countdown=COUNTDOWN)  # the worker holds it, unacknowledged, until due
    time.sleep(1.0)

    redis.kill()
    time.sleep(OUTAGE)
    assert worker.poll() is None, f"the worker died when Redis went away:\n{log.read_text()[-3000:]}"
    redis.start()

    wait_for(lambda: Meeting.objects.get(pk=held.id).post_meeting_done_at is not None, timeout=COUNTDOWN + 10,
             what=f"the held countdown task to run\n{log.read_text()[-3000:]}")
    assert time.monotonic() - sent_at < COUNTDOWN + 8  # on time, not after the visibility timeout
    _post_meeting(sender, later.id)
    wait_for(lambda: Meeting.objects.get(pk=later.id).post_meeting_done_at is not None, timeout=20,
             what=f"a task sent after the restart to run\n{log.read_text()[-3000:]}")
    assert worker.poll() is None
    assert "Unrecoverable error" not in log.read_text()
