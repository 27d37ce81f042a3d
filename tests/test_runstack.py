"""`make run` (devstack/run.py) supervises its children: a process or an embedded server that
dies is started again and takes nothing else down; a crashed run leaves nothing that breaks the
next one; Ctrl-C still stops everything. The real `python -m devstack.run`, on the test
database and an embedded Redis of its own (so that killing it touches nothing else)."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from devstack.supervisor import _start_time
from tests.support import a_new_terminal, close_other_connections, stack_env
from tests.waiting import wait_for

pytestmark = pytest.mark.django_db(transaction=True)
REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RunStack:
    """`python -m devstack.run` with an embedded Redis of its own, on the test database or
    (`embedded_postgres`) on an embedded PostgreSQL of its own too."""

    def __init__(self, run_dir: Path, port: int, redis_port: int, embedded_postgres: bool = False, **extra: str):
        self.run_dir, self.port, self.redis_port = run_dir, port, redis_port
        env = stack_env(run_dir, **{"PORT": str(port), "PUBLIC_BASE_URL": f"http://127.0.0.1:{port}",
                                    "EMBEDDED_REDIS_PORT": str(redis_port), "ORCHESTRATOR": "process",
                                    "DEPLOYMENT_NAME": "runstack-test", "ORPHAN_SWEEP_INTERVAL_SECONDS": "2",
                                    "LOG_LEVEL": "WARNING", **extra})
        for name in ("REDIS_URL", "CELERY_BROKER_URL"):  # the embedded Redis of this stack
            env.pop(name)
        if embedded_postgres:
            env.pop("DATABASE_URL")
            env["EMBEDDED_POSTGRES_PORT"] = str(_free_port())
        self.env = env
        self.log = run_dir / "runstack.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "devstack.run"], cwd=REPO, env=self.env,
                                         stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
        wait_for(self.healthy, timeout=60, interval=0.2, what=f"the stack to answer /healthz\n{self.tail()}")
        wait_for(lambda: set(self.pids()) >= {"web", "beat", "worker-lifecycle", "worker-orchestrator",
                                              "worker-webhooks", "worker-sweep"},
                 timeout=30, what="every child in the pid file")

    def healthy(self) -> bool:
        try:
            return requests.get(f"http://127.0.0.1:{self.port}/healthz", timeout=1).status_code == 200
        except requests.RequestException:
            return False

    def pids(self) -> dict[str, int]:
        try:
            return {name: entry["pid"] for name, entry in json.loads((self.run_dir / "runstack.pids").read_text()).items()}
        except (OSError, ValueError):
            return {}

    def redis_pid(self) -> int:
        return int((self.run_dir / "redis" / "redis.pid").read_text())

    def postgres_pid(self) -> int:
        return int((self.run_dir / "postgres" / "postmaster.pid").read_text().splitlines()[0])

    def demo_key(self) -> str:
        """The demo user's API key, from RUN_DIR/credentials.env (where the README says it is)."""
        from devstack import stackinfo

        return wait_for(lambda: stackinfo.read_credentials(self.run_dir).get("DEMO_API_KEY"), timeout=30,
                        what=f"the demo key in credentials.env\n{self.tail()}")

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""

    def stop(self) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGINT)
        try:
            return self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


def _command_lines() -> list[list[str]]:
    lines = []
    for proc in Path("/proc").iterdir():
        try:
            raw = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if raw:
            lines.append(raw.rstrip(b"\0").decode(errors="replace").split("\0"))
    return lines


def _command_line(pid: int) -> list[str]:
    try:
        return (Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").decode(errors="replace").split("\0"))
    except OSError:
        return []


def _alive(pid: int) -> bool:
    return _start_time(pid) is not None and "Z" not in Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1][:3]


@pytest.fixture
def runstack(tmp_path):
    stacks: list[RunStack] = []

    def make(**options) -> RunStack:
        stack = RunStack(tmp_path, _free_port(), _free_port(), **options)
        stacks.append(stack)
        return stack

    yield make
    for stack in stacks:
        stack.stop()
    # The bots outlive `make run` by design (a meeting outlives a restart of the manager): end them.
    from orchestrators.process import ProcessOrchestrator

    for bot in ProcessOrchestrator(tmp_path, "runstack-test").list():
        if bot.status.is_running:
            ProcessOrchestrator(tmp_path, "runstack-test").kill(bot.container_id)
    from devstack import servers as devstack

    devstack.stop_redis(tmp_path)
    if (tmp_path / "postgres" / "postmaster.pid").exists():
        devstack.stop_postgres(tmp_path)
    close_other_connections()


def test_a_worker_that_dies_is_restarted_and_the_web_keeps_answering(runstack):
    stack = runstack()
    stack.start()
    before = stack.pids()

    os.kill(before["worker-lifecycle"], signal.SIGKILL)

    wait_for(lambda: stack.pids().get("worker-lifecycle") not in (None, before["worker-lifecycle"]), timeout=20,
             what=f"the lifecycle worker to be restarted\n{stack.tail()}")
    assert _alive(stack.pids()["worker-lifecycle"])
    assert stack.healthy()
    assert {n: p for n, p in stack.pids().items() if n != "worker-lifecycle"} == \
        {n: p for n, p in before.items() if n != "worker-lifecycle"}  # nobody else was touched
    assert stack.proc.poll() is None
    assert "worker-lifecycle exited" in stack.log.read_text()


def test_the_embedded_redis_is_started_again_and_bots_launch_afterwards(runstack):
    from tests.factories import make_token, make_user

    stack = runstack()
    stack.start()
    killed = stack.redis_pid()

    os.kill(killed, signal.SIGKILL)

    wait_for(lambda: (stack.run_dir / "redis" / "redis.pid").exists() and stack.redis_pid() != killed,
             timeout=30, what=f"Redis to be started again\n{stack.tail()}")
    assert stack.proc.poll() is None and stack.healthy()
    user = make_user()
    api = requests.Session()
    api.headers["X-API-Key"] = make_token(user)
    base = f"http://127.0.0.1:{stack.port}"
    created = api.post(f"{base}/bots", json={"platform": "google_meet", "native_meeting_id": "abc-defg-hij"}, timeout=10)
    assert created.status_code == 201, created.text
    wait_for(lambda: api.get(f"{base}/meetings/{created.json()['id']}", timeout=5).json()["status"] == "active",
             timeout=60, interval=0.3, what=f"the bot requested after the restart to be active\n{stack.tail()}")
    assert api.delete(f"{base}/bots/google_meet/abc-defg-hij", timeout=10).status_code == 202


def test_ctrl_c_stops_every_child(runstack):
    stack = runstack()
    stack.start()
    children = stack.pids()

    assert stack.stop() == 0

    assert not any(_alive(pid) for pid in children.values())
    assert not (stack.run_dir / "runstack.pids").exists()


def test_after_the_supervisor_is_killed_the_next_run_comes_up_cleanly(runstack):
    first = runstack()
    first.start()
    children = first.pids()

    first.proc.kill()  # SIGKILL: no chance to stop anything itself
    first.proc.wait()

    # Its children die with it (parent-death signal), whatever is left is stopped by the next run.
    second = runstack()
    second.port, second.redis_port = first.port, first.redis_port
    second.env = first.env
    second.start()

    def left() -> dict[str, str]:
        return {name: " ".join(_command_line(pid)) for name, pid in children.items() if _alive(pid)}

    wait_for(lambda: not left(), timeout=10, what="the first run's children to be gone")
    def beats() -> list[list[str]]:
        return [argv for argv in _command_lines() if "beat" in argv and str(second.run_dir / "celerybeat-schedule") in argv]

    wait_for(lambda: len(beats()) == 1, timeout=20, what="the new run's beat")  # and never two on one schedule


def _readme_curl_session() -> str:
    """The README's "Try it" shell block, verbatim."""
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("### Try it: a bot's whole life with curl"):]
    start = section.index("```sh\n") + len("```sh\n")
    return section[start:section.index("\n```", start)] + "\n"


def test_the_readmes_curl_session_pasted_whole_prints_what_its_comments_say(runstack):
    stack = runstack()
    stack.start()
    block = _readme_curl_session()
    promised = [line.split("prints: ", 1)[1] for line in block.splitlines() if "prints: " in line]

    result = subprocess.run(["bash", "-c", block], cwd=REPO, capture_output=True, text=True, timeout=120,
                            env=a_new_terminal(RUN_DIR=str(stack.run_dir)))

    assert result.returncode == 0 and result.stderr == "", f"{result.stdout}\n{result.stderr}\n{stack.tail()}"
    printed = result.stdout.splitlines()
    assert len(printed) == len(promised) == 7, result.stdout
    for shown, promise in zip(printed, promised):
        position = 0
        for fragment in filter(None, (part.strip() for part in promise.split("…"))):
            found = shown.find(fragment, position)
            assert found >= 0, f"the README promises {promise!r}; printed: {shown!r}"
            position = found + len(fragment)


def test_a_second_terminal_needs_only_the_run_dir(runstack):
    stack = runstack(embedded_postgres=True)  # on ports no default and no other terminal knows
    stack.start()

    result = subprocess.run([sys.executable, "manage.py", "create_token", "demo@example.com"], cwd=REPO,
                            capture_output=True, text=True, timeout=60,
                            env=a_new_terminal(RUN_DIR=str(stack.run_dir)))

    assert result.returncode == 0, result.stderr
    assert "demo@example.com: bm_" in result.stdout


def test_a_second_make_run_on_the_same_run_dir_refuses_and_leaves_the_first_alone(runstack):
    first = runstack()
    first.start()
    children = first.pids()

    second = subprocess.run([sys.executable, "-m", "devstack.run"], cwd=REPO, env=first.env,
                            capture_output=True, text=True, timeout=60)

    assert second.returncode == 1
    assert f"another `make run` is running on RUN_DIR={first.run_dir} (pid {first.proc.pid}" in second.stderr
    assert first.pids() == children and all(_alive(pid) for pid in children.values())
    assert first.healthy()

