"""The orchestrator contract: the same tests against every backend.

- process: real processes; the bot is a Python one-liner (PROCESS_BOT_COMMAND).
- docker: a real engine; the bot is the busybox test image (docker/bot-test-image/). Marked
  `docker`: skips without an engine, fails under CI.
- nomad: python-nomad over HTTP against the Nomad fake (tests/orchestrators/nomad_fake.py). The fake
  plays Nomad's client too: a stop ends the task with exit code 0 (a bot that obeys SIGTERM), and
  the harness makes the task exit by itself when the spec asks for it.
- kubernetes: the official client over HTTP against the Kubernetes fake
  (tests/orchestrators/kubernetes_fake.py), which plays the scheduler, a kubelet and the garbage
  collector as the Nomad fake plays Nomad's client.

Every bot follows one convention: it runs until SIGTERM and then exits 0; with "test_exit_code": N
in its BOT_CONFIG it exits with N right after starting; with "test_ignore_sigterm": true (process
and docker) only SIGKILL ends it, and it prints SIGTERM_IGNORED on each SIGTERM (the positive
signal that a SIGTERM reached it).
"""
from __future__ import annotations

import importlib.util
import shlex
import socket
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace
from typing import Callable

import pytest

from orchestrators.base import (LABEL_DEPLOYMENT, LABEL_MANAGED, LABEL_MEETING_ID, LABEL_SESSION_UID,
                                LABEL_USER_ID, BotSpec, NormalizedStatus, NotOurBotError, Orchestrator,
                                OrchestratorError, labels_name_session)
from tests.orchestrators.conftest import KUBERNETES_NAMESPACE, NOMAD_BOT_JOB
from tests.orchestrators.support import docker_settings, find, kubernetes_settings, make_spec, nomad_settings
from tests.waiting import wait_for

# What both test bots print on each SIGTERM they ignore (docker/bot-test-image/bot.sh too).
SIGTERM_IGNORED = "SIGTERM ignored"
# The process backend's bot: obeys SIGTERM, or exits at once with test_exit_code.
PROCESS_BOT = (
    f"import signal, sys; IGNORED = {SIGTERM_IGNORED!r}; signal.signal(signal.SIGTERM, lambda *_: sys.exit(0)); "
    "import json, os, time; "
    "config = json.loads(os.environ['BOT_CONFIG']); "
    "config.get('test_ignore_sigterm') and signal.signal(signal.SIGTERM, lambda *_: print(IGNORED, flush=True)); "
    "'test_exit_code' in config and sys.exit(config['test_exit_code']); "
    "[time.sleep(0.2) for _ in iter(int, 1)]"
)
STOP_TIMEOUT = 10


@dataclass
class Harness:
    """One backend under contract: builds it for a deployment, knows an id it never issued."""

    kind: str
    deployment: str
    build: Callable[[str], Orchestrator]
    unknown_id: str
    after_start: Callable[[str, BotSpec], None] = lambda container_id, spec: None
    logs: Callable[[Orchestrator, str], str] | None = None  # what a bot printed (backends whose bots we signal)
    backends: list[Orchestrator] = field(default_factory=list)

    def backend(self, deployment: str | None = None) -> Orchestrator:
        built = self.build(deployment or self.deployment)
        self.backends.append(built)
        return built

    def start(self, backend: Orchestrator, spec: BotSpec) -> str:
        container_id = backend.start(spec)
        self.after_start(container_id, spec)
        return container_id

    def cleanup(self) -> None:
        for backend in self.backends:
            for bot in backend.list():
                backend.stop(bot.container_id, timeout=1)
                backend.remove(bot.container_id)


def _read(path) -> str:
    return path.read_text() if path.exists() else ""


def _process_harness(request, tmp_path, deployment):
    if importlib.util.find_spec("orchestrators.process") is None:
        pytest.skip("process backend not present")
    from orchestrators import process_state
    from orchestrators.process import ProcessOrchestrator

    command = f"{shlex.quote(sys.executable)} -c {shlex.quote(PROCESS_BOT)}"
    return Harness(
        kind="process", deployment=deployment, unknown_id="proc-000000000000",
        logs=lambda backend, container_id: _read(process_state.log_path(backend.bots_dir, container_id)),
        build=lambda name: ProcessOrchestrator.from_settings(SimpleNamespace(
            PROCESS_BOT_COMMAND=command, RUN_DIR=tmp_path / "run", DEPLOYMENT_NAME=name,
            PROCESS_BOT_ENV_PASS=[], PROCESS_BOT_USER="")),
    )


def _docker_harness(request, tmp_path, deployment):
    image = request.getfixturevalue("bot_test_image")
    deployments = request.getfixturevalue("docker_cleanup")
    from orchestrators.docker import DockerOrchestrator

    def build(name):
        deployments.append(name)  # the engine is shared: leave nothing behind, whatever happens
        return DockerOrchestrator.from_settings(docker_settings(name, image))

    client = request.getfixturevalue("docker_client")
    return Harness(kind="docker", deployment=deployment, build=build, unknown_id="f" * 64,
                   logs=lambda backend, container_id: client.containers.get(container_id).logs().decode())


def _nomad_harness(request, tmp_path, deployment):
    fake = request.getfixturevalue("nomad_fake")
    from orchestrators.nomad import NomadOrchestrator

    def after_start(container_id, spec):
        if "test_exit_code" in spec.config:
            fake.finish(container_id, spec.config["test_exit_code"])

    return Harness(
        kind="nomad", deployment=deployment, after_start=after_start,
        unknown_id=f"{NOMAD_BOT_JOB}/dispatch-1700000000-deadbeef",
        build=lambda name: NomadOrchestrator.from_settings(nomad_settings(fake.url, name)),
    )


def _kubernetes_harness(request, tmp_path, deployment):
    fake = request.getfixturevalue("kubernetes_fake")
    from orchestrators.kubernetes import KubernetesOrchestrator

    def after_start(container_id, spec):
        if "test_exit_code" in spec.config:
            fake.finish(container_id, KUBERNETES_NAMESPACE, spec.config["test_exit_code"])

    return Harness(
        kind="kubernetes", deployment=deployment, after_start=after_start,
        unknown_id="botmanager-bot-1-deadbeef",
        build=lambda name: KubernetesOrchestrator.from_settings(kubernetes_settings(fake.kubeconfig_path, name)),
    )


HARNESSES = {"process": _process_harness, "docker": _docker_harness, "nomad": _nomad_harness,
             "kubernetes": _kubernetes_harness}


@pytest.fixture(params=[
    "process",
    pytest.param("docker", marks=pytest.mark.docker),
    "nomad",
    "kubernetes",
])
def harness(request, tmp_path, deployment_name):
    built = HARNESSES[request.param](request, tmp_path, deployment_name)
    yield built
    built.cleanup()


def _up_and_listening(backend: Orchestrator, container_id: str) -> None:
    """Up, and past its first instructions: a SIGTERM that lands before the bot has installed its
    handler kills it with the default action (143, or nothing at all for a shell as PID 1). The
    handler is the bot's first statement, milliseconds after the process starts."""
    wait_for(lambda: (b := find(backend.list(), container_id)) and b.status is NormalizedStatus.UP,
             what="the bot to be Up")
    time.sleep(0.3)


def _ended(backend: Orchestrator, container_id: str):
    """The bot's listing once it is no longer running."""
    return wait_for(lambda: (b := find(backend.list(), container_id)) and not b.status.is_running and b,
                    what=f"bot {container_id} to end")


# --- start and list -------------------------------------------------------------------------------
def test_started_bot_is_listed_up_with_its_identity(harness):
    backend = harness.backend()
    spec = make_spec(harness.deployment)
    before = datetime.now(timezone.utc) - timedelta(seconds=2)
    container_id = harness.start(backend, spec)
    info = wait_for(lambda: (b := find(backend.list(), container_id)) and b.status is NormalizedStatus.UP and b,
                    what="the bot to be Up")
    assert info.name == spec.name
    assert info.raw_status
    assert info.exit_code is None
    assert before <= info.created_at <= datetime.now(timezone.utc) + timedelta(seconds=2)


def test_started_bot_carries_the_labels_that_identify_it(harness):
    backend = harness.backend()
    spec = make_spec(harness.deployment)
    container_id = harness.start(backend, spec)
    labels = find(backend.list(), container_id).labels
    for key in (LABEL_MEETING_ID, LABEL_USER_ID, LABEL_SESSION_UID):
        assert labels[key] == spec.labels[key]
    assert (labels[LABEL_DEPLOYMENT], labels[LABEL_MANAGED]) == (harness.deployment, "true")
    assert find(backend.list(), container_id).meeting_id == int(spec.labels[LABEL_MEETING_ID])


def test_a_started_bots_labels_hold_a_digest_of_its_session_never_the_uid(harness):
    # Labels are readable by whoever lists bots (`docker ps`, a Nomad job-read token); the uid is
    # the session's capability.
    backend = harness.backend()
    spec = make_spec(harness.deployment)
    uid = spec.config["connectionId"]
    container_id = harness.start(backend, spec)
    labels = find(backend.list(), container_id).labels
    assert not [key for key, value in labels.items() if uid in key or uid in value]
    assert labels_name_session(labels, uid)


def test_list_returns_every_bot_of_the_deployment(harness):
    backend = harness.backend()
    started = {harness.start(backend, make_spec(harness.deployment)) for _ in range(2)}
    assert {b.container_id for b in backend.list()} == started


def test_list_of_a_deployment_without_bots_is_empty(harness):
    assert harness.backend().list() == []


def test_inspect_agrees_with_list(harness):
    backend = harness.backend()
    container_id = harness.start(backend, make_spec(harness.deployment))
    wait_for(lambda: (b := find(backend.list(), container_id)) and b.status is NormalizedStatus.UP,
             what="the bot to be Up")
    listed, inspected = find(backend.list(), container_id), backend.inspect(container_id)
    assert (inspected.container_id, inspected.name, inspected.status, inspected.labels) == (
        listed.container_id, listed.name, listed.status, listed.labels)


def test_inspect_of_a_bot_the_backend_never_started_is_none(harness):
    assert harness.backend().inspect(harness.unknown_id) is None


# --- deployments ----------------------------------------------------------------------------------
def test_bots_of_another_deployment_are_neither_listed_nor_inspectable(harness):
    other = harness.deployment + "-other"
    ours, theirs = harness.backend(), harness.backend(other)
    their_bot = harness.start(theirs, make_spec(other))
    our_bot = harness.start(ours, make_spec(harness.deployment))
    assert [b.container_id for b in ours.list()] == [our_bot]
    assert ours.inspect(their_bot) is None


@pytest.mark.parametrize("verb", ["terminate", "kill", "stop", "remove"])
def test_a_bot_of_another_deployment_is_refused_and_survives(harness, verb):
    # The attack: a task pushed into the broker names a bot that is not ours. Nothing is signalled
    # or removed, and the refusal is an error of its own (callers log it and never retry).
    other = harness.deployment + "-other"
    ours, theirs = harness.backend(), harness.backend(other)
    their_bot = harness.start(theirs, make_spec(other, test_ignore_sigterm=True))
    _up_and_listening(theirs, their_bot)
    order = (lambda: ours.stop(their_bot, timeout=1)) if verb == "stop" else (
        lambda: getattr(ours, verb)(their_bot))
    with pytest.raises(NotOurBotError, match="Refusing"):
        order()
    assert find(theirs.list(), their_bot).status is NormalizedStatus.UP  # (the Nomad fake obeys before it answers)
    if harness.logs is not None:
        # A real bot may get a signal after the call returned. Its owner's SIGTERM, sent now,
        # reaches it after any the refused order sent: once the bot says it got one, a SIGTERM of
        # ours would show as a second, and a SIGKILL or a removal would have left no bot to get it.
        theirs.terminate(their_bot)
        wait_for(lambda: SIGTERM_IGNORED in harness.logs(theirs, their_bot),
                 what="the bot to get its owner's SIGTERM")
        assert harness.logs(theirs, their_bot).count(SIGTERM_IGNORED) == 1
    theirs.stop(their_bot, timeout=0)  # at once: it ignores SIGTERM (the cleanup would wait out a timeout)


# --- endings --------------------------------------------------------------------------------------
def test_stopped_bot_ends_exited_with_exit_code_zero(harness):
    backend = harness.backend()
    container_id = harness.start(backend, make_spec(harness.deployment))
    _up_and_listening(backend, container_id)
    backend.stop(container_id, timeout=STOP_TIMEOUT)
    info = _ended(backend, container_id)
    assert (info.status, info.exit_code) == (NormalizedStatus.EXITED, 0)


def _signalled(harness, signal: str, **config) -> tuple[Orchestrator, str]:
    """A bot up and listening, sent `signal` ("terminate" or "kill"); the call must return at once:
    nothing waits for a bot to die."""
    backend = harness.backend()
    container_id = harness.start(backend, make_spec(harness.deployment, **config))
    _up_and_listening(backend, container_id)
    started = time.monotonic()
    getattr(backend, signal)(container_id)
    assert time.monotonic() - started < 2.0
    return backend, container_id


def test_terminate_asks_the_bot_to_stop_and_returns_at_once(harness):
    backend, container_id = _signalled(harness, "terminate")
    info = _ended(backend, container_id)
    assert (info.status, info.exit_code) == (NormalizedStatus.EXITED, 0)


def test_terminate_and_kill_of_a_removed_bot_are_no_ops(harness):
    backend = harness.backend()
    container_id = harness.start(backend, make_spec(harness.deployment, exit_code=0))
    _ended(backend, container_id)
    backend.remove(container_id)
    backend.terminate(container_id)
    backend.kill(container_id)
    assert backend.inspect(container_id) is None


@pytest.fixture(params=["process", pytest.param("docker", marks=pytest.mark.docker)])
def signal_harness(request, tmp_path, deployment_name):
    """The backends whose bots get signals from us (Nomad signals its tasks itself, after the job's
    kill_timeout)."""
    built = HARNESSES[request.param](request, tmp_path, deployment_name)
    yield built
    built.cleanup()


def test_terminate_returns_at_once_even_when_the_bot_ignores_sigterm(signal_harness):
    backend, container_id = _signalled(signal_harness, "terminate", test_ignore_sigterm=True)
    wait_for(lambda: SIGTERM_IGNORED in signal_harness.logs(backend, container_id), what="the bot to get the SIGTERM")
    assert find(backend.list(), container_id).status.is_running  # it ignored the request


def test_kill_ends_a_bot_that_ignores_sigterm_with_exit_code_137(signal_harness):
    backend, container_id = _signalled(signal_harness, "kill", test_ignore_sigterm=True)
    info = _ended(backend, container_id)
    assert (info.status, info.exit_code) == (NormalizedStatus.EXITED, 137)


def test_bot_that_exits_by_itself_stays_listed_with_its_exit_code(harness):
    # No auto-remove anywhere: the sweep needs the exit code of a bot that ended on its own.
    backend = harness.backend()
    container_id = harness.start(backend, make_spec(harness.deployment, exit_code=3))
    info = _ended(backend, container_id)
    assert (info.status, info.exit_code) == (NormalizedStatus.EXITED, 3)
    assert backend.inspect(container_id).exit_code == 3


def test_stopping_a_stopped_bot_again_is_a_no_op(harness):
    backend = harness.backend()
    container_id = harness.start(backend, make_spec(harness.deployment))
    backend.stop(container_id, timeout=STOP_TIMEOUT)
    backend.stop(container_id, timeout=STOP_TIMEOUT)
    assert _ended(backend, container_id).status is NormalizedStatus.EXITED


def test_stopping_a_removed_bot_is_a_no_op(harness):
    backend = harness.backend()
    container_id = harness.start(backend, make_spec(harness.deployment))
    backend.stop(container_id, timeout=STOP_TIMEOUT)
    _ended(backend, container_id)
    backend.remove(container_id)
    backend.stop(container_id, timeout=STOP_TIMEOUT)
    assert backend.inspect(container_id) is None


def test_removed_bot_is_neither_listed_nor_inspectable(harness):
    backend = harness.backend()
    container_id = harness.start(backend, make_spec(harness.deployment, exit_code=0))
    _ended(backend, container_id)
    backend.remove(container_id)
    assert find(backend.list(), container_id) is None
    assert backend.inspect(container_id) is None


def test_removing_a_removed_bot_again_is_a_no_op(harness):
    backend = harness.backend()
    container_id = harness.start(backend, make_spec(harness.deployment, exit_code=0))
    _ended(backend, container_id)
    backend.remove(container_id)
    backend.remove(container_id)
    assert backend.inspect(container_id) is None


# --- backend errors (the backends that talk to an engine) -----------------------------------------
def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _unreachable_docker(tmp_path):
    from orchestrators.docker import DockerOrchestrator

    return DockerOrchestrator.from_settings(docker_settings(
        "test-unreachable", "botmanager-test-bot:latest", DOCKER_HOST=f"tcp://127.0.0.1:{_closed_port()}"))


def _unreachable_nomad(tmp_path):
    from orchestrators.nomad import NomadOrchestrator

    return NomadOrchestrator.from_settings(nomad_settings(f"http://127.0.0.1:{_closed_port()}", "test-unreachable"))


def _unreachable_kubernetes(tmp_path):
    from orchestrators.kubernetes import KubernetesOrchestrator
    from tests.orchestrators.kubernetes_fake import KubernetesFake

    kubeconfig = tmp_path / "unreachable-kubeconfig"
    fake = KubernetesFake()
    fake.start()
    kubeconfig.write_text(fake.kubeconfig().replace(fake.url, f"http://127.0.0.1:{_closed_port()}"))
    fake.close()
    return KubernetesOrchestrator.from_settings(kubernetes_settings(kubeconfig, "test-unreachable"))


@pytest.fixture(params=["docker", "nomad", "kubernetes"])
def unreachable_backend(request, tmp_path):
    return {"docker": _unreachable_docker, "nomad": _unreachable_nomad,
            "kubernetes": _unreachable_kubernetes}[request.param](tmp_path)


def test_list_raises_rather_than_answering_empty_when_the_engine_is_unreachable(unreachable_backend):
    with pytest.raises(OrchestratorError):
        unreachable_backend.list()


def test_start_raises_when_the_engine_is_unreachable(unreachable_backend):
    with pytest.raises(OrchestratorError):
        unreachable_backend.start(make_spec("test-unreachable"))


def test_inspect_raises_rather_than_answering_none_when_the_engine_is_unreachable(unreachable_backend):
    with pytest.raises(OrchestratorError):
        unreachable_backend.inspect(f"{NOMAD_BOT_JOB}/dispatch-1700000000-deadbeef"
                                    if unreachable_backend.name == "nomad" else "botmanager-bot-1-deadbeef")
