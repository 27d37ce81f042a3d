"""The local-process backend against real processes, real signals and a real /proc."""
from __future__ import annotations

import json
import os
import pwd
import shlex
import signal
import subprocess
import sys
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from orchestrators import process_state
from orchestrators.base import (LABEL_DEPLOYMENT, LABEL_MANAGED, LABEL_MEETING_ID, BotSpec,
                                NormalizedStatus, NotOurBotError, Orchestrator, OrchestratorError)
from orchestrators.process import ProcessOrchestrator
from tests.waiting import wait_for

ROOT = Path(__file__).resolve().parents[2]
FAKE_BOT = Path(__file__).with_name("process_fake_bot.py")
DEPLOYMENT = "proc-test"


def fake_bot_command(*args: str) -> str:
    return shlex.join([sys.executable, str(FAKE_BOT), *args])


def spec(meeting_id: int = 42, **config) -> BotSpec:
    return BotSpec(name=f"botmanager-bot-{meeting_id}-abcdef12",
                   config={"meeting_id": meeting_id, "token": "tok-" + uuid.uuid4().hex, **config},
                   labels={LABEL_MEETING_ID: str(meeting_id)})


@pytest.fixture
def make_orchestrator(settings, tmp_path):
    """make_orchestrator(*fake_bot_args, deployment=...) → a ProcessOrchestrator on a temp RUN_DIR.
    Every bot still running under that RUN_DIR is SIGKILLed after the test."""
    settings.RUN_DIR = tmp_path / "run"

    def _make(*fake_bot_args: str, deployment: str = DEPLOYMENT, command: str | None = None):
        settings.DEPLOYMENT_NAME = deployment
        settings.PROCESS_BOT_COMMAND = command if command is not None else fake_bot_command(*fake_bot_args)
        return ProcessOrchestrator.from_settings(settings)

    yield _make
    for path in (tmp_path / "run" / "bots").glob("proc-*.json"):
        try:
            record = process_state.read(path)
        except ValueError:
            continue  # a record planted corrupt on purpose: no process behind it
        if record.get("pgid") and process_state.is_running(record["pid"], record.get("proc_start_time")):
            os.killpg(record["pgid"], signal.SIGKILL)


def bot_log(orch: ProcessOrchestrator, container_id: str) -> str:
    path = process_state.log_path(orch.bots_dir, container_id)
    return path.read_text() if path.exists() else ""


def start_ready(orch: ProcessOrchestrator, bot_spec: BotSpec | None = None) -> str:
    container_id = orch.start(bot_spec or spec())
    wait_for(lambda: "ready" in bot_log(orch, container_id), what="the bot to be ready")
    return container_id


def record_of(orch: ProcessOrchestrator, container_id: str) -> dict:
    return process_state.read(process_state.record_path(orch.bots_dir, container_id))


def exited(orch: ProcessOrchestrator, container_id: str):
    info = orch.inspect(container_id)
    return info if info.status is NormalizedStatus.EXITED and info.exit_code is not None else None


def craft_record(orch: ProcessOrchestrator, *, pid: int | None, start_time: int | None,
                 created_at: datetime | None = None, status: str = "running") -> str:
    """A record as the supervisor would have left it, for states a test cannot stage otherwise."""
    container_id = f"proc-{uuid.uuid4().hex[:12]}"
    orch.bots_dir.mkdir(parents=True, exist_ok=True)
    process_state.write(process_state.record_path(orch.bots_dir, container_id), {
        "container_id": container_id, "name": "crafted", "command": ["none"], "status": status,
        "labels": {LABEL_MANAGED: "true", LABEL_DEPLOYMENT: orch.deployment},
        "created_at": (created_at or datetime.now(timezone.utc)).isoformat(),
        "log_path": str(process_state.log_path(orch.bots_dir, container_id)),
        "pid": pid, "pgid": pid, "proc_start_time": start_time, "exit_code": None,
    })
    return container_id


def process_state_letter(pid: int) -> str | None:
    stat = process_state.proc_stat(pid)
    return stat[0] if stat else None


# --- start, list, inspect -------------------------------------------------------------------------
def test_implements_the_orchestrator_interface(make_orchestrator):
    orch = make_orchestrator("sleep")
    assert isinstance(orch, Orchestrator) and orch.name == "process"


def test_default_command_is_simbot_with_this_python(make_orchestrator):
    assert make_orchestrator(command="").command == [sys.executable, "-m", "simbot"]


def test_started_bot_is_listed_up_with_its_labels(make_orchestrator):
    orch = make_orchestrator("sleep")
    container_id = start_ready(orch)
    [info] = orch.list()
    assert info.container_id == container_id and container_id.startswith("proc-")
    assert info.name == "botmanager-bot-42-abcdef12"
    assert (info.status, info.raw_status, info.exit_code) == (NormalizedStatus.UP, "running", None)
    assert info.labels == {LABEL_MEETING_ID: "42", LABEL_MANAGED: "true", LABEL_DEPLOYMENT: DEPLOYMENT}
    assert info.meeting_id == 42
    assert abs((datetime.now(timezone.utc) - info.created_at).total_seconds()) < 30


def test_inspect_returns_the_running_bot(make_orchestrator):
    orch = make_orchestrator("sleep")
    container_id = start_ready(orch)
    assert orch.inspect(container_id) == orch.list()[0]


def test_bot_gets_bot_config_in_its_environment_and_runs_in_the_project_root(make_orchestrator):
    orch = make_orchestrator("env")
    bot_spec = spec(platform="teams")
    container_id = start_ready(orch, bot_spec)
    lines = dict(line.split("=", 1) for line in bot_log(orch, container_id).splitlines() if "=" in line)
    assert json.loads(lines["BOT_CONFIG"]) == bot_spec.config
    assert Path(lines["CWD"]) == ROOT


def test_bot_output_goes_to_a_log_file_under_run_dir_bots(make_orchestrator, settings):
    orch = make_orchestrator("sleep")
    container_id = start_ready(orch)
    assert (settings.RUN_DIR / "bots" / f"{container_id}.log").read_text().count("ready") == 1


def test_the_meeting_token_is_kept_out_of_records_and_command_lines(make_orchestrator):
    orch = make_orchestrator("sleep")
    bot_spec = spec()
    container_id = start_ready(orch, bot_spec)
    record = record_of(orch, container_id)
    token = bot_spec.config["token"]
    assert token not in process_state.record_path(orch.bots_dir, container_id).read_text()
    for pid in (record["pid"], record["supervisor_pid"]):
        assert token not in Path(f"/proc/{pid}/cmdline").read_text()


def test_list_is_empty_before_any_bot_started(make_orchestrator):
    assert make_orchestrator("sleep").list() == []


def test_inspect_of_an_unknown_id_is_none(make_orchestrator):
    orch = make_orchestrator("sleep")
    assert orch.inspect("proc-000000000000") is None
    assert orch.inspect("../../etc/passwd") is None


# --- durability -----------------------------------------------------------------------------------
def test_a_new_instance_lists_and_stops_a_bot_started_by_a_process_that_exited(make_orchestrator, settings):
    orch = make_orchestrator("sleep")
    starter = subprocess.run(
        [sys.executable, "-c",
         "import sys; from orchestrators.base import BotSpec; "
         "from orchestrators.process import ProcessOrchestrator as P; "
         "print(P(sys.argv[1], sys.argv[2], sys.argv[3:]).start(BotSpec('bot', {}, {})))",
         str(settings.RUN_DIR), DEPLOYMENT, *orch.command],
        cwd=ROOT, capture_output=True, text=True, timeout=30, check=True)
    container_id = starter.stdout.strip()
    restarted_worker = make_orchestrator("sleep")
    wait_for(lambda: "ready" in bot_log(restarted_worker, container_id), what="the bot to be ready")
    assert [(b.container_id, b.status) for b in restarted_worker.list()] == [(container_id, NormalizedStatus.UP)]
    restarted_worker.stop(container_id, timeout=5)
    assert wait_for(lambda: exited(restarted_worker, container_id)).exit_code == 0


def test_a_bot_whose_supervisor_was_killed_is_still_listed_and_stoppable(make_orchestrator):
    orch = make_orchestrator("sleep")
    container_id = start_ready(orch)
    record = record_of(orch, container_id)
    os.kill(record["supervisor_pid"], signal.SIGKILL)
    assert orch.inspect(container_id).status is NormalizedStatus.UP
    orch.stop(container_id, timeout=5)
    info = orch.inspect(container_id)
    assert (info.status, info.exit_code, info.raw_status) == (NormalizedStatus.EXITED, None,
                                                              "gone (exit code unknown)")


def test_the_supervisor_is_reaped_after_the_bot_exits(make_orchestrator):
    orch = make_orchestrator("exit", "0")
    container_id = orch.start(spec())
    wait_for(lambda: exited(orch, container_id))
    supervisor = record_of(orch, container_id)["supervisor_pid"]
    wait_for(lambda: process_state_letter(supervisor) is None, what="the supervisor to be reaped")


# --- exit codes and status ------------------------------------------------------------------------
def test_the_exit_code_of_a_bot_that_exits_by_itself_is_reported(make_orchestrator):
    orch = make_orchestrator("exit", "7")
    container_id = orch.start(spec())
    info = wait_for(lambda: exited(orch, container_id))
    assert (info.exit_code, info.raw_status) == (7, "exited (7)")
    assert [b.status for b in orch.list()] == [NormalizedStatus.EXITED]


def test_a_command_that_cannot_run_fails_start_and_is_listed_failed(make_orchestrator, tmp_path):
    orch = make_orchestrator(command=str(tmp_path / "no-such-bot"))
    with pytest.raises(OrchestratorError, match="no-such-bot"):
        orch.start(spec())
    [info] = orch.list()
    assert info.status is NormalizedStatus.FAILED and "no-such-bot" in info.raw_status


def test_a_record_stuck_starting_past_the_start_timeout_is_failed(make_orchestrator):
    orch = make_orchestrator("sleep")
    fresh = craft_record(orch, pid=None, start_time=None, status="starting")
    stale = craft_record(orch, pid=None, start_time=None, status="starting",
                         created_at=datetime.now(timezone.utc) - timedelta(minutes=5))
    assert orch.inspect(fresh).status is NormalizedStatus.STARTING
    assert orch.inspect(stale).status is NormalizedStatus.FAILED


def test_a_reused_pid_does_not_count_as_running_and_is_never_signalled(make_orchestrator):
    orch = make_orchestrator("sleep")
    stranger = subprocess.Popen(["sleep", "300"], start_new_session=True)
    try:
        real_start = process_state.proc_stat(stranger.pid)[1]
        container_id = craft_record(orch, pid=stranger.pid, start_time=real_start - 1)
        info = orch.inspect(container_id)
        assert (info.status, info.exit_code) == (NormalizedStatus.EXITED, None)
        orch.stop(container_id, timeout=0)
        assert stranger.poll() is None
    finally:
        stranger.kill()
        stranger.wait()


def test_a_zombie_does_not_count_as_running(make_orchestrator):
    orch = make_orchestrator("sleep")
    child = subprocess.Popen(["true"])  # not waited for: it stays a zombie of this process
    try:
        start_time = process_state.proc_stat(child.pid)[1]
        wait_for(lambda: process_state_letter(child.pid) == "Z", what="a zombie")
        container_id = craft_record(orch, pid=child.pid, start_time=start_time)
        assert orch.inspect(container_id).status is NormalizedStatus.EXITED
    finally:
        child.wait()


# --- stop -----------------------------------------------------------------------------------------
def test_stop_sends_sigterm_and_a_cooperative_bot_exits_0(make_orchestrator):
    orch = make_orchestrator("sleep")
    container_id = start_ready(orch)
    started = time.monotonic()
    orch.stop(container_id, timeout=10)
    assert time.monotonic() - started < 5
    info = orch.inspect(container_id)
    assert (info.status, info.exit_code, info.raw_status) == (NormalizedStatus.EXITED, 0, "exited (0)")


def test_stop_sigkills_a_bot_that_ignores_sigterm_after_the_timeout(make_orchestrator):
    orch = make_orchestrator("ignore-term")
    container_id = start_ready(orch)
    started = time.monotonic()
    orch.stop(container_id, timeout=0.5)
    assert time.monotonic() - started >= 0.5
    info = orch.inspect(container_id)
    assert (info.exit_code, info.raw_status) == (137, "killed by SIGKILL (137)")


def niceness(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[16])


def test_a_bot_runs_at_the_control_planes_priority_until_it_is_told_to_stop(make_orchestrator):
    orch = make_orchestrator("ignore-term")
    record = record_of(orch, start_ready(orch))

    assert niceness(record["pid"]) == niceness(os.getpid())


def test_a_bot_told_to_stop_and_its_supervisor_get_the_lowest_cpu_priority(make_orchestrator):
    orch = make_orchestrator("ignore-term")  # so it is still there to be looked at
    container_id = start_ready(orch)
    record = record_of(orch, container_id)

    orch.terminate(container_id)

    assert niceness(record["pid"]) == 19
    assert niceness(record["supervisor_pid"]) == 19


def test_a_supervisor_recording_the_exit_while_the_bot_is_removed_does_not_bring_the_record_back(make_orchestrator):
    orch = make_orchestrator("exit", "0")
    container_id = orch.start(spec())
    wait_for(lambda: exited(orch, container_id), what="the bot's exit")
    path = process_state.record_path(orch.bots_dir, container_id)
    updating, removing = threading.Event(), threading.Event()

    def slow_supervisor_update():  # process_state.update, caught between its read and its write
        with process_state.locked(path):
            record = process_state.read(path)
            updating.set()
            removing.wait(5)
            time.sleep(0.2)
            process_state.write(path, {**record, "note": "written late"})

    supervisor = threading.Thread(target=slow_supervisor_update)
    supervisor.start()
    updating.wait(5)
    removing.set()
    orch.remove(container_id)
    supervisor.join()

    assert orch.inspect(container_id) is None
    assert not path.exists()


def test_a_bot_being_stopped_is_listed_stopping(make_orchestrator):
    orch = make_orchestrator("ignore-term")
    container_id = start_ready(orch)
    stopper = threading.Thread(target=orch.stop, args=(container_id, 1.0))
    stopper.start()
    try:
        wait_for(lambda: orch.inspect(container_id).status is NormalizedStatus.STOPPING, what="Stopping")
    finally:
        stopper.join()
    assert orch.inspect(container_id).status is NormalizedStatus.EXITED


def test_stop_kills_the_whole_process_group(make_orchestrator, tmp_path):
    pid_file = tmp_path / "child.pid"
    orch = make_orchestrator("spawn-child", str(pid_file))
    container_id = start_ready(orch)
    child_pid = int(pid_file.read_text())
    orch.stop(container_id, timeout=5)
    wait_for(lambda: process_state_letter(child_pid) in (None, "Z"), what="the child to die")


def test_stop_of_an_exited_bot_is_a_no_op(make_orchestrator):
    orch = make_orchestrator("sleep")
    container_id = start_ready(orch)
    orch.stop(container_id, timeout=5)
    before = orch.inspect(container_id)
    orch.stop(container_id, timeout=5)
    assert orch.inspect(container_id) == before


def test_stop_of_an_unknown_id_is_a_no_op(make_orchestrator):
    orch = make_orchestrator("sleep")
    orch.stop("proc-000000000000", timeout=1)
    orch.stop("not-a-container-id", timeout=1)
    assert orch.list() == []


# --- remove ---------------------------------------------------------------------------------------
def test_remove_forgets_an_exited_bot_and_its_log(make_orchestrator):
    orch = make_orchestrator("exit", "0")
    container_id = orch.start(spec())
    wait_for(lambda: exited(orch, container_id))
    orch.remove(container_id)
    assert orch.inspect(container_id) is None and orch.list() == []
    assert list(orch.bots_dir.iterdir()) == []


def test_remove_refuses_a_running_bot(make_orchestrator):
    orch = make_orchestrator("sleep")
    container_id = start_ready(orch)
    with pytest.raises(OrchestratorError, match="stop it"):
        orch.remove(container_id)
    assert orch.inspect(container_id).status is NormalizedStatus.UP


def test_remove_of_an_unknown_id_is_a_no_op(make_orchestrator):
    make_orchestrator("sleep").remove("proc-000000000000")


# --- deployments and errors -----------------------------------------------------------------------
def test_bots_of_another_deployment_are_invisible_and_untouched(make_orchestrator):
    other = make_orchestrator("sleep", deployment="other-deployment")
    theirs = start_ready(other)
    ours = make_orchestrator("sleep", deployment=DEPLOYMENT)
    mine = start_ready(ours)
    assert [b.container_id for b in ours.list()] == [mine]
    assert ours.inspect(theirs) is None
    with pytest.raises(NotOurBotError):
        ours.stop(theirs, timeout=0)
    assert other.inspect(theirs).status is NormalizedStatus.UP


def test_list_raises_when_the_state_directory_cannot_be_read(make_orchestrator, settings):
    orch = make_orchestrator("sleep")
    settings.RUN_DIR.mkdir(parents=True)
    (settings.RUN_DIR / "bots").write_text("not a directory")
    with pytest.raises(OrchestratorError, match="cannot read"):
        orch.list()


def test_list_raises_on_a_corrupt_record(make_orchestrator):
    orch = make_orchestrator("sleep")
    orch.bots_dir.mkdir(parents=True)
    process_state.record_path(orch.bots_dir, "proc-0123456789ab").write_text("{half a rec")
    with pytest.raises(OrchestratorError, match="proc-0123456789ab"):
        orch.list()


# --- the real simulated bot -----------------------------------------------------------------------
def test_the_default_command_runs_simbot_which_leaves_cleanly_on_stop(make_orchestrator, settings):
    from tests.simbot.receiver import CallbackReceiver

    orch = make_orchestrator(command="")
    with CallbackReceiver() as receiver:
        connection_id = str(uuid.uuid4())
        container_id = orch.start(BotSpec(name="simbot", labels={}, config={
            "meeting_id": 42, "connectionId": connection_id, "redisUrl": settings.REDIS_URL,
            "botManagerCallbackUrl": receiver.exited_url, "container_name": "simbot", "token": "t"}))
        receiver.wait_calls("started", timeout=15)
        orch.stop(container_id, timeout=10)
        assert orch.inspect(container_id).exit_code == 0
        assert receiver.of("exited")[0].body["connection_id"] == connection_id


# --- least privilege: a bot inherits none of the service's environment ----------------------------
def environ_of(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(entry.split("=", 1) for entry in raw.decode().split("\0") if "=" in entry)


SERVICE_SECRETS = {"SECRET_KEY": "service-secret-key", "DATABASE_URL": "postgres://svc:pw@db/bm",
                   "REDIS_URL": "redis://:redis-password@127.0.0.1:6379/0",
                   "AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"}


def test_a_bot_inherits_no_secret_of_the_services_environment(make_orchestrator, monkeypatch):
    # The attack: a bot reads its own environment (or its supervisor's) for the service's keys.
    for name, value in SERVICE_SECRETS.items():
        monkeypatch.setenv(name, value)
    orch = make_orchestrator("sleep")
    container_id = start_ready(orch)
    record = record_of(orch, container_id)
    for pid in (record["pid"], record["supervisor_pid"]):
        environ = environ_of(pid)
        assert not set(SERVICE_SECRETS) & set(environ), pid
        assert not any(value in "".join(environ.values()) for value in SERVICE_SECRETS.values())
    bot = environ_of(record["pid"])
    assert json.loads(bot["BOT_CONFIG"])["meeting_id"] == 42
    assert bot["PATH"] == os.environ["PATH"]


def test_a_bot_gets_only_the_base_variables_and_those_the_setting_names(make_orchestrator, monkeypatch,
                                                                        settings):
    monkeypatch.setenv("TZ", "Europe/Paris")
    monkeypatch.setenv("LC_ALL", "C.UTF-8")
    monkeypatch.setenv("BOT_PROXY", "http://proxy:3128")
    monkeypatch.setenv("SIMBOT_STEP_SECONDS", "0.1")
    monkeypatch.setenv("UNLISTED", "x")
    settings.PROCESS_BOT_ENV_PASS = ["BOT_PROXY", "SIMBOT_*"]
    orch = make_orchestrator("sleep")
    environ = environ_of(record_of(orch, start_ready(orch))["pid"])
    assert (environ["TZ"], environ["LC_ALL"], environ["BOT_PROXY"], environ["SIMBOT_STEP_SECONDS"]) == (
        "Europe/Paris", "C.UTF-8", "http://proxy:3128", "0.1")
    assert "UNLISTED" not in environ
    assert set(environ) <= {"PATH", "HOME", "LANG", "LANGUAGE", "TZ", "TMPDIR", "BOT_CONFIG", "BOT_PROXY",
                            "SIMBOT_STEP_SECONDS"} | {n for n in environ if n.startswith("LC_")}


@pytest.mark.skipif(os.geteuid() != 0, reason="running a bot as another user needs root")
def test_a_bot_run_as_process_bot_user_cannot_read_the_service_secrets(make_orchestrator, settings):
    # The attack: the bot opens RUN_DIR/secrets.json (0600, the service's user's).
    settings.PROCESS_BOT_USER = "nobody"
    secrets_file = Path(settings.RUN_DIR) / "secrets.json"
    secrets_file.parent.mkdir(parents=True, exist_ok=True)
    secrets_file.write_text('{"SECRET_KEY": "x"}')
    secrets_file.chmod(0o600)
    probe = ('if cat "$1" >/dev/null 2>&1; then echo READ; else echo DENIED; fi; '
             'echo "uid $(id -u) groups $(id -G)"; echo ready; exec sleep 60')
    orch = make_orchestrator(command=shlex.join(["sh", "-c", probe, "sh", str(secrets_file)]))
    log = bot_log(orch, start_ready(orch))
    nobody = pwd.getpwnam("nobody")
    assert "DENIED" in log and "READ" not in log, log
    assert f"uid {nobody.pw_uid} groups {nobody.pw_gid}\n" in log, log


def test_an_unknown_process_bot_user_fails_the_start_with_its_name(make_orchestrator, settings):
    settings.PROCESS_BOT_USER = "no-such-user-i24"
    orch = make_orchestrator("sleep")
    with pytest.raises(OrchestratorError, match="no-such-user-i24"):
        orch.start(spec())
