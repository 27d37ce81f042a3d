"""Restarts lose no scheduled bot and launch none twice. A real Celery worker (every queue) and a
real beat run as processes on the test database and broker, with the process backend in a temp
RUN_DIR (every bot start leaves a record there). Both are SIGKILLed around a bot's join_at, then
started again, and the backend must have started exactly one bot for the meeting:
- before join_at: nothing else keeps the schedule (no task waits for it), so only the database
  can launch it once they are back;
- right after the claim (`scheduled -> requested`), before the launch, with the launch task left
  in the broker, or lost (a crash between the claim's commit and the enqueue): the launch still
  happens once, from the queue or from the sweep's relaunch;
- during the launch: the bot started before the kill is adopted, or started once after it."""
from __future__ import annotations

import os
import signal
import sys
from datetime import timedelta

import pytest
from django.utils import timezone

from bench.common import Service, stop_all
from common import queues
from meetings import services as bot_services
from meetings.models import Meeting, MeetingSession, MeetingTransition
from orchestrators.process import ProcessOrchestrator
from tests.factories import make_user
from tests.support import all_queues, broker_client, close_other_connections, stack_env
from tests.waiting import wait_for, wait_sweep_runs

pytestmark = pytest.mark.django_db(transaction=True)

INTERVAL = 1.0  # the scheduler's and the sweep's
# Longer than a worker takes to start again here: the sweep relaunches a claimed meeting only once
# the launch in the queue could have run (it would anyway start no second bot: meetings/launching/launch.py).
ORPHAN_GRACE = 8.0
DEPLOYMENT = "scheduled-restarts"
KNOBS = {"ORCHESTRATOR": "process", "DEPLOYMENT_NAME": DEPLOYMENT,
         "PROCESS_BOT_COMMAND": f"{sys.executable} -c 'import time; time.sleep(120)'",
         "SCHEDULED_LAUNCH_INTERVAL_SECONDS": str(INTERVAL), "SCHEDULED_LAUNCH_LEAD_SECONDS": "0",
         "ORPHAN_SWEEP_INTERVAL_SECONDS": str(INTERVAL), "ORPHAN_GRACE_SECONDS": str(ORPHAN_GRACE),
         "REQUESTED_TIMEOUT_SECONDS": "600"}
START_TIMEOUT = 90.0  # a Celery process starting on a busy 2-core machine


class Processes:
    """The worker and beat of one test, started, SIGKILLed and started again."""

    def __init__(self, run_dir):
        self.run_dir = run_dir
        self.env = stack_env(run_dir, **KNOBS)
        self.started: list[Service] = []
        self.generation = 0

    def start(self, queues: tuple[str, ...] = ()) -> None:
        """Worker (every queue, or only `queues`) and beat."""
        from botmanager.celery import app

        self.generation += 1
        celery = os.path.join(os.path.dirname(sys.executable), "celery")
        name = f"sched{os.getpid()}g{self.generation}"
        worker = Service([celery, "-A", "botmanager", "worker", "--loglevel", "WARNING", "--pool", "threads",
                          "--concurrency", "4", "--hostname", f"{name}@%h", "--without-gossip", "--without-mingle",
                          *(("--queues", ",".join(queues)) if queues else ())],
                         self.env, self.run_dir / f"worker-{self.generation}.log")
        # The same schedule file each time, as a restarted beat has.
        beat = Service([celery, "-A", "botmanager", "beat", "--loglevel", "WARNING", "--schedule",
                        str(self.run_dir / "beat-schedule")], self.env, self.run_dir / f"beat-{self.generation}.log")
        self.started += [worker, beat]
        wait_for(lambda: app.control.ping(destination=[f"{name}@{os.uname().nodename}"], timeout=1)
                 or worker.proc.poll() is not None, timeout=START_TIMEOUT, interval=0.2, what="the worker to answer")
        assert worker.proc.poll() is None, worker.log.read_text()[-3000:]
        self.worker, self.beat = worker, beat

    def kill(self) -> None:
        """SIGKILL the worker and beat with their pool processes (each runs in its own session)."""
        for service in (self.worker, self.beat):
            os.killpg(service.proc.pid, signal.SIGKILL)
        for service in (self.worker, self.beat):
            service.proc.wait()

    def stop(self) -> None:
        stop_all(self.started)

    def logs(self) -> str:
        return "\n".join(f"--- {s.log.name}\n{s.log.read_text()[-1500:]}" for s in self.started)


@pytest.fixture
def processes(tmp_path):
    # An empty broker to start with: an earlier test file of this test process may have left tasks
    # in another instance's queue (a Docker engine's), which this worker never takes.
    broker_client().delete(*all_queues(), "unacked", "unacked_index")
    made = Processes(tmp_path)
    try:
        yield made
    finally:
        made.stop()
        backend = ProcessOrchestrator(tmp_path, DEPLOYMENT)
        for bot in backend.list():
            if bot.status.is_running:
                backend.kill(bot.container_id)
        broker_client().delete(*all_queues(), "unacked", "unacked_index")
        close_other_connections()


def schedule_in(seconds: float) -> Meeting:
    request = bot_services.BotRequest("google_meet", "abc-defg-hij",
                                      join_at=timezone.now() + timedelta(seconds=seconds))
    meeting = bot_services.request_bot(make_user(), request)
    assert meeting.status == "scheduled"
    return meeting


def bots_started_for(processes: Processes, meeting: Meeting) -> int:
    """Bots the backend was asked to start for the meeting: each start leaves a record, running or not."""
    return sum(1 for bot in ProcessOrchestrator(processes.run_dir, DEPLOYMENT).list() if bot.meeting_id == meeting.id)


def status(meeting: Meeting) -> str:
    return Meeting.objects.values_list("status", flat=True).get(pk=meeting.pk)


def assert_launched_exactly_once(processes: Processes, meeting: Meeting) -> None:
    wait_for(lambda: Meeting.objects.get(pk=meeting.pk).bot_container_id, timeout=ORPHAN_GRACE + 60, interval=0.2,
             what=f"the scheduled bot to be launched\n{processes.logs()}")
    # A second launch could only come from the sweep's relaunch, once the meeting's last change
    # is older than the grace: wait for that, then for a few sweep runs past it (the scheduler
    # runs as often), then for the worker to have taken whatever they enqueued. (Not "the worker
    # idle": the killed worker's deliveries stay unacknowledged until the visibility timeout.)
    meeting.refresh_from_db()
    wait_for(lambda: timezone.now() - meeting.updated_at > timedelta(seconds=ORPHAN_GRACE), timeout=ORPHAN_GRACE + 1,
             interval=0.1, what="the grace to pass")
    wait_sweep_runs(3, timeout=60, what=f"\n{processes.logs()}")
    broker = broker_client()
    # A barrier, not a speed check: on a loaded machine the threads worker may trail beat's
    # one-second entries for a while. If it never drains, what is still queued and the logs say why.
    queued_now: dict[str, int] = {}

    def drained() -> bool:
        queued_now.update({queue: broker.llen(queue) for queue in all_queues()})
        return not any(queued_now.values())

    try:
        wait_for(drained, timeout=90, what="the worker to take every queued task")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; still queued: {queued_now}\n{processes.logs()}") from None
    meeting.refresh_from_db()
    assert meeting.status == "requested"  # the stand-in bot never calls back
    assert bots_started_for(processes, meeting) == 1
    assert MeetingSession.objects.filter(meeting=meeting).count() == 1
    claims = MeetingTransition.objects.filter(meeting=meeting, from_status="scheduled", applied=True)
    assert list(claims.values_list("to_status", flat=True)) == ["requested"]


def test_worker_and_beat_killed_before_join_at_launch_the_bot_once_when_back(processes):
    processes.start()
    meeting = schedule_in(4)

    wait_sweep_runs(1, timeout=30, what=f" (the worker and beat at work)\n{processes.logs()}")
    processes.kill()
    wait_for(lambda: timezone.now() > meeting.join_at, timeout=10, interval=0.1,
             what="join_at to pass while nothing runs")

    assert status(meeting) == "scheduled"
    assert bots_started_for(processes, meeting) == 0
    processes.start()
    assert_launched_exactly_once(processes, meeting)


@pytest.mark.parametrize("launch", ["queued", "lost"])
def test_worker_and_beat_killed_right_after_the_claim_launch_the_bot_once(processes, launch):
    """Claimed, not launched: the first worker takes no launch (no orchestrator queue), so the
    kill lands between the claim and the launch. The launch task is then left in the broker, or
    lost as a crash between the claim's commit and its enqueue loses it."""
    processes.start(queues=(queues.LIFECYCLE, queues.SWEEP))
    meeting = schedule_in(3)

    wait_for(lambda: status(meeting) != "scheduled", timeout=30, interval=0.01,
             what=f"the scheduler to claim the meeting\n{processes.logs()}")
    processes.kill()
    if launch == "lost":
        broker_client().delete(*all_queues(), "unacked", "unacked_index")

    assert status(meeting) == "requested"
    assert not MeetingSession.objects.filter(meeting=meeting).exists()
    processes.start()
    assert_launched_exactly_once(processes, meeting)


def test_worker_and_beat_killed_during_the_launch_leave_one_bot(processes):
    """Killed while the launch of the claimed meeting is under way (its session is claimed, the
    bot being started or just started, not yet recorded or just recorded): the killed delivery is
    not redelivered before the broker's visibility timeout, so the sweep's relaunch takes over
    and adopts the bot started before the kill, or starts the one that never was."""
    processes.start()
    meeting = schedule_in(3)

    wait_for(lambda: MeetingSession.objects.filter(meeting=meeting).exists(), timeout=30, interval=0.01,
             what=f"the launch to begin\n{processes.logs()}")
    processes.kill()
    print(f"\nkilled during the launch: {bots_started_for(processes, meeting)} bot record(s), container "
          f"{'recorded' if Meeting.objects.get(pk=meeting.pk).bot_container_id else 'not recorded'}")

    processes.start()
    assert_launched_exactly_once(processes, meeting)
