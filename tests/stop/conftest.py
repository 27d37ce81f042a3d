"""Fixtures of the stop-reliability tests: the process backend in a temp RUN_DIR with
tiny stand-in bots (real processes), an in-process Celery worker, a broker emptied around every
test, a counting post-meeting step, and the live stack of the end-to-end tests (`stack`).

Meetings are put in a given status, and their `deadline_at` / `updated_at` moved into the past,
with ORM updates: that is test setup (it simulates elapsed time), never product behaviour.
"""
from __future__ import annotations

import collections
import random
import sys
import threading

import pytest
from django.conf import settings as django_settings

from meetings.launching import launch
from meetings.models import Meeting
from meetings.stopping import post_meeting
from orchestrators import process_state
from orchestrators.base import LABEL_DEPLOYMENT, LABEL_MANAGED, LABEL_MEETING_ID, BotSpec
from orchestrators.process import ProcessOrchestrator
from orchestrators.registry import get_orchestrator
from tests.e2e.conftest import stack  # noqa: F401  (the live stack, reused by test_seed_acceptance)
from tests.factories import make_session
from tests.support import (all_queues, broker_client,  # noqa: F401 (used by the tests of this folder)
                           close_other_connections, lose_queued_tasks, queued, queued_tasks, run_bot_stops,
                           run_queued)
from tests.waiting import wait_for

# Stand-in bots: each prints "ready" once its signal handling is in place. None of them listens to
# Redis, so a leave command never reaches them: only the orchestrator can end them.
_PY = sys.executable
BOT_COMMANDS = {
    # SIGTERM's default action ends it (exit 143).
    "sleep": [_PY, "-c", "import time; print('ready', flush=True); time.sleep(600)"],
    # Ignores SIGTERM: only SIGKILL ends it (exit 137).
    "stubborn": [_PY, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                            "print('ready', flush=True); time.sleep(600)"],
    # Exits at once with the code given as the next argument.
    "exit": [_PY, "-c", "import sys; sys.exit(int(sys.argv[1]))"],
}


def run_task(task, *args):
    """Run a task's body here and now, as a worker would for one delivery (errors propagate)."""
    return task.apply(args=args, throw=True)


def snapshot(meeting_id: int) -> dict:
    """Everything a task could change about a meeting: its row and its transition history."""
    from meetings.models import MeetingTransition

    meeting = Meeting.objects.get(pk=meeting_id)
    row = {f: getattr(meeting, f) for f in (
        "status", "completion_reason", "failure_stage", "deadline_at", "stop_requested_at", "start_time",
        "end_time", "updated_at", "data", "bot_container_id", "current_session_id", "post_meeting_done_at")}
    row["transitions"] = list(MeetingTransition.objects.filter(meeting_id=meeting_id).order_by("id").values_list(
        "id", "from_status", "to_status", "source", "applied"))
    return row


# --- Broker ----------------------------------------------------------------------------------------
@pytest.fixture(autouse=True)
def clean_broker():
    """Tasks left by one test (enqueued without a worker, or handed back by a stopping worker)
    must not run in the next one."""
    def purge():
        broker_client().delete(*all_queues(), "unacked", "unacked_index")

    purge()
    yield
    purge()


@pytest.fixture(autouse=True)
def unique_meeting_ids(request):
    """Meeting ids name Redis channels and keys that every test run on this Redis server shares
    (`bot_commands:meeting:<id>`, `simbot:received:<id>`, `bm:meeting:<id>:current_uid`), and each
    fresh test database numbers meetings from 1: start each test's ids at a random point, so that
    concurrent or earlier runs never command (or pollute the records of) each other's bots."""
    marker = request.node.get_closest_marker("django_db")
    if marker is None:
        return
    transactional = marker.kwargs.get("transaction", False)
    request.getfixturevalue("transactional_db" if transactional else "db")
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT setval(pg_get_serial_sequence(%s, 'id'), %s)",
                       [Meeting._meta.db_table, random.randint(10**9, 10**12)])


# --- Process backend and bots ----------------------------------------------------------------------
class Bots:
    """Starts stand-in bots for meetings on the process backend, like `launch` does (same labels,
    a current session), and reads what the backend sees."""

    def __init__(self, run_dir):
        self.run_dir = run_dir

    @property
    def backend(self) -> ProcessOrchestrator:
        return get_orchestrator("process")

    def _start(self, kind: str, labels: dict, name: str, args: tuple = ()) -> str:
        command = BOT_COMMANDS[kind] + [str(a) for a in args]
        starter = ProcessOrchestrator(self.run_dir, django_settings.DEPLOYMENT_NAME, command=command)
        container_id = starter.start(BotSpec(name=name, config={}, labels=labels))
        if kind == "exit":
            wait_for(lambda: not self.running(container_id) and self.info(container_id).exit_code is not None,
                     what=f"bot {container_id} to exit")
        else:
            wait_for(lambda: "ready" in self.log(container_id), what=f"bot {container_id} to be ready")
        return container_id

    def start(self, meeting: Meeting, kind: str = "sleep", *args) -> str:
        """A bot for `meeting`, recorded on the meeting as launch records it."""
        session = make_session(meeting)
        container_id = self._start(kind, launch.bot_labels(meeting, session), f"bot-{meeting.id}", args)
        Meeting.objects.filter(pk=meeting.pk).update(bot_container_id=container_id, orchestrator="process",
                                                     bot_instance=self.backend.instance_id())
        meeting.refresh_from_db()
        return container_id

    def start_orphan(self, meeting_id: int, kind: str = "sleep", *args) -> str:
        """A bot labelled with `meeting_id` that no meeting row records (a leftover)."""
        labels = {LABEL_MANAGED: "true", LABEL_DEPLOYMENT: django_settings.DEPLOYMENT_NAME,
                  LABEL_MEETING_ID: str(meeting_id)}
        return self._start(kind, labels, f"orphan-{meeting_id}", args)

    def info(self, container_id: str):
        return self.backend.inspect(container_id)

    def running(self, container_id: str) -> bool:
        info = self.info(container_id)
        return info is not None and info.status.is_running

    def record(self, container_id: str) -> dict | None:
        return process_state.read(process_state.record_path(self.backend.bots_dir, container_id))

    def log(self, container_id: str) -> str:
        path = process_state.log_path(self.backend.bots_dir, container_id)
        return path.read_text() if path.exists() else ""

    def stop_all(self) -> None:
        for bot in self.backend.list():
            if bot.status.is_running:
                self.backend.stop(bot.container_id, timeout=0)


@pytest.fixture(autouse=True)
def isolated_backend(settings, tmp_path):
    """Every test here sees only its own bots: a sweep must never list (and stop) the bots of a
    `make run` stack in the default RUN_DIR."""
    settings.RUN_DIR = tmp_path
    settings.ORCHESTRATOR = "process"
    settings.DEPLOYMENT_NAME = "stop-tests"
    settings.PROCESS_BOT_COMMAND = ""
    get_orchestrator.cache_clear()
    yield
    get_orchestrator.cache_clear()


@pytest.fixture
def bots(settings, tmp_path):
    settings.BOT_STOP_TIMEOUT_SECONDS = 1
    helper = Bots(tmp_path)
    yield helper
    helper.stop_all()


# --- Celery worker ---------------------------------------------------------------------------------
@pytest.fixture
def worker(transactional_db):
    """A real Celery worker (thread pool) in this process, consuming the test broker."""
    from celery.contrib.testing.worker import start_worker

    from botmanager.celery import app

    with start_worker(app, pool="threads", concurrency=4, perform_ping_check=False, shutdown_timeout=10,
                      loglevel="WARNING"):
        yield
    close_other_connections()


# --- Post-meeting ----------------------------------------------------------------------------------
@pytest.fixture
def post_meeting_runs():
    """A post-meeting step that counts its runs per meeting id (registered for the test only)."""
    counts: collections.Counter = collections.Counter()
    lock = threading.Lock()

    def count_run(meeting):
        with lock:
            counts[meeting.id] += 1

    post_meeting.STEPS.append(count_run)
    yield counts
    post_meeting.STEPS.remove(count_run)


# --- Django admin ----------------------------------------------------------------------------------
CHANGELIST = "/admin/meetings/meeting/"


@pytest.fixture
def console(db):
    """A Django test client logged in as a superuser (the operations console)."""
    from django.test import Client

    from tests.factories import make_user

    client = Client()
    client.force_login(make_user(email="ops@example.com", is_staff=True, is_superuser=True))
    return client


def admin_action(client, action: str, meeting_ids=(), **fields):
    """POST the changelist's action bar, as the browser does (`index` marks the action bar)."""
    return client.post(CHANGELIST, {"action": action, "index": "0",
                                    "_selected_action": [str(i) for i in meeting_ids], **fields}, follow=True)


def admin_finalize(client, meeting_ids, outcome: str):
    """The finalize action's two steps: the intermediate form, then its confirmation."""
    form = admin_action(client, "finalize_selected", meeting_ids)
    assert form.status_code == 200
    return client.post(CHANGELIST, {"action": "finalize_selected", "confirm": "yes", "outcome": outcome,
                                    "_selected_action": [str(i) for i in meeting_ids]}, follow=True)
