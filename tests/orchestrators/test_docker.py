"""The Docker backend against a real engine (marker `docker`), plus its pure status mapping.

The engine tests use the busybox test bot image (docker/bot-test-image/) built locally: no
registry is reachable. Engine states that cannot be produced on purpose (`removing`, `dead`) are
covered by the mapping tests only.
"""
from __future__ import annotations

import dataclasses
import json
import socket
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from orchestrators.base import (LABEL_DEPLOYMENT, LABEL_MANAGED, LABEL_MEETING_ID, LABEL_SESSION_UID,
                                LABEL_USER_ID, NormalizedStatus, NotOurBotError, OrchestratorError,
                                session_digest)
from orchestrators.docker import DockerOrchestrator, exit_code_from_status_text, normalize_status
from tests.orchestrators.support import docker_settings, find, make_spec
from tests.waiting import wait_for


# --- status mapping (no engine) -------------------------------------------------------------------
@pytest.mark.parametrize(("state", "expected"), [
    ("created", NormalizedStatus.STARTING),
    ("running", NormalizedStatus.UP),
    ("paused", NormalizedStatus.UP),
    ("restarting", NormalizedStatus.STARTING),
    ("removing", NormalizedStatus.STOPPING),
    ("exited", NormalizedStatus.EXITED),
    ("dead", NormalizedStatus.FAILED),
])
def test_engine_state_maps_to_documented_normalized_status(state, expected):
    assert normalize_status(state) is expected


def test_unknown_engine_state_is_never_reported_as_gone():
    assert normalize_status("hibernating").is_running


@pytest.mark.parametrize(("text", "expected"), [
    ("Exited (0) 3 seconds ago", 0),
    ("Exited (137) About a minute ago", 137),
    ("Restarting (3) 1 second ago", 3),
    ("Up 5 seconds", None),
    ("Created", None),
    ("", None),
])
def test_exit_code_is_read_from_the_list_status_text(text, expected):
    assert exit_code_from_status_text(text) == expected


def test_registry_builds_the_docker_backend_from_the_django_settings(settings):
    # The tests build backends from stand-in settings objects; this one proves the names exist.
    from orchestrators.registry import get_orchestrator

    settings.BOT_IMAGE, settings.DOCKER_BOT_MEM_LIMIT = "registry-check:1", "256m"
    get_orchestrator.cache_clear()
    try:
        backend = get_orchestrator("docker")
    finally:
        get_orchestrator.cache_clear()
    assert isinstance(backend, DockerOrchestrator)
    assert (backend.image, backend.mem_limit, backend.deployment) == ("registry-check:1", "256m",
                                                                       settings.DEPLOYMENT_NAME)


# --- engine unreachable (no engine needed) --------------------------------------------------------
def _unreachable(tmp_path, **overrides) -> DockerOrchestrator:
    return DockerOrchestrator.from_settings(docker_settings(
        "test-unreachable", "botmanager-test-bot:latest",
        DOCKER_HOST=f"unix://{tmp_path}/no-engine.sock", **overrides))


def test_list_raises_when_engine_is_down(tmp_path):
    with pytest.raises(OrchestratorError, match="not reachable"):
        _unreachable(tmp_path).list()


def test_start_raises_when_engine_is_down(tmp_path):
    with pytest.raises(OrchestratorError):
        _unreachable(tmp_path).start(make_spec("test-unreachable"))


def test_stop_raises_when_engine_is_down(tmp_path):
    # "Could not ask" must not read as "already gone".
    with pytest.raises(OrchestratorError):
        _unreachable(tmp_path).stop("0123456789ab", timeout=1)


def test_list_raises_when_engine_does_not_answer_in_time():
    # A listening socket that never accepts: the connection opens, no answer ever comes.
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    try:
        port = silent.getsockname()[1]
        backend = DockerOrchestrator(image="x", deployment="test-timeout",
                                     base_url=f"tcp://127.0.0.1:{port}", timeout=0.5)
        started = time.monotonic()
        with pytest.raises(OrchestratorError):
            backend.list()
        assert time.monotonic() - started < 10
    finally:
        silent.close()


# --- real engine ----------------------------------------------------------------------------------

@pytest.fixture
def backend(bot_test_image, docker_cleanup, deployment_name) -> DockerOrchestrator:
    return DockerOrchestrator.from_settings(docker_settings(deployment_name, bot_test_image))


def _ours(docker_client, deployment_name, image, **options):
    """A container created directly through the SDK but labelled as one of the deployment's bots:
    for engine states the backend itself never produces (created, restarting, TERM-ignoring)."""
    labels = {LABEL_MANAGED: "true", LABEL_DEPLOYMENT: deployment_name, LABEL_MEETING_ID: "1"}
    return docker_client.containers.create(image, labels=labels, name=f"bm-test-{uuid.uuid4().hex[:8]}",
                                           **options)


@pytest.mark.docker
def test_start_creates_container_with_bot_config_labels_and_name(backend, docker_client, deployment_name):
    spec = make_spec(deployment_name, language="en")
    container_id = backend.start(spec)
    attrs = docker_client.api.inspect_container(container_id)
    env = dict(item.split("=", 1) for item in attrs["Config"]["Env"])
    assert json.loads(env["BOT_CONFIG"]) == spec.config
    assert attrs["Name"] == f"/{spec.name}"
    labels = attrs["Config"]["Labels"]
    for key in (LABEL_MEETING_ID, LABEL_USER_ID, LABEL_SESSION_UID):
        assert labels[key] == spec.labels[key]
    assert labels[LABEL_DEPLOYMENT] == deployment_name
    assert labels[LABEL_MANAGED] == "true"


@pytest.mark.docker
def test_list_and_inspect_report_only_the_projects_own_labels(backend, docker_client, deployment_name):
    # The test image carries org.opencontainers.image.title (as the base image does): the engine
    # merges an image's labels into its containers', and they are not the bot's.
    container_id = backend.start(make_spec(deployment_name))
    assert "org.opencontainers.image.title" in docker_client.api.inspect_container(container_id)["Config"]["Labels"]
    listed = find(backend.list(), container_id)
    inspected = backend.inspect(container_id)
    for info in (listed, inspected):
        assert info.labels and all(key.startswith("botmanager.") for key in info.labels), info.labels
        assert info.labels[LABEL_DEPLOYMENT] == deployment_name


@pytest.mark.docker
def test_start_never_sets_auto_remove(backend, docker_client, deployment_name):
    container_id = backend.start(make_spec(deployment_name))
    assert docker_client.api.inspect_container(container_id)["HostConfig"]["AutoRemove"] is False


@pytest.mark.docker
def test_exited_bot_stays_listed_with_its_exit_code(backend, deployment_name):
    # The sweep reads exit codes, so an exited container must remain until remove().
    container_id = backend.start(make_spec(deployment_name, exit_code=5))
    info = wait_for(lambda: (b := find(backend.list(), container_id)) and not b.status.is_running and b,
                    what="the bot to exit")
    assert (info.status, info.raw_status, info.exit_code) == (NormalizedStatus.EXITED, "exited", 5)


@pytest.mark.docker
def test_start_applies_network_and_resource_limits(bot_test_image, docker_client, docker_cleanup, deployment_name):
    network = docker_client.networks.create(f"bm-test-{uuid.uuid4().hex[:8]}")
    try:
        backend = DockerOrchestrator.from_settings(docker_settings(
            deployment_name, bot_test_image, DOCKER_NETWORK=network.name,
            DOCKER_BOT_MEM_LIMIT="64m", DOCKER_BOT_NANO_CPUS=500_000_000))
        container_id = backend.start(make_spec(deployment_name))
        attrs = docker_client.api.inspect_container(container_id)
        assert attrs["HostConfig"]["Memory"] == 64 * 1024 * 1024
        assert attrs["HostConfig"]["NanoCpus"] == 500_000_000
        assert list(attrs["NetworkSettings"]["Networks"]) == [network.name]
        docker_client.api.remove_container(container_id, force=True)
    finally:
        network.remove()


@pytest.mark.docker
def test_start_labels_the_bot_with_the_backends_deployment_whatever_the_spec_says(backend, docker_client,
                                                                                  deployment_name):
    spec = make_spec(deployment_name)
    spec.labels[LABEL_DEPLOYMENT] = "someone-else"
    container_id = backend.start(spec)
    assert docker_client.api.inspect_container(container_id)["Config"]["Labels"][LABEL_DEPLOYMENT] == deployment_name


@pytest.mark.docker
def test_start_with_missing_image_raises_without_pulling(docker_client, docker_cleanup, deployment_name):
    backend = DockerOrchestrator.from_settings(docker_settings(deployment_name, "botmanager-absent:never"))
    with pytest.raises(OrchestratorError, match="not present on the Docker engine"):
        backend.start(make_spec(deployment_name))
    assert docker_client.containers.list(all=True, filters={"label": f"{LABEL_DEPLOYMENT}={deployment_name}"}) == []


@pytest.mark.docker
def test_bot_that_cannot_start_raises_and_leaves_no_container(docker_client, docker_cleanup, deployment_name,
                                                             bot_test_image):
    # An image whose command does not exist: create succeeds, start fails.
    holder = docker_client.containers.create(bot_test_image)
    broken = f"botmanager-test-broken:{uuid.uuid4().hex[:8]}"
    holder.commit(*broken.split(":"), changes=['CMD ["/no-such-bot"]'])
    holder.remove()
    try:
        backend = DockerOrchestrator.from_settings(docker_settings(deployment_name, broken))
        with pytest.raises(OrchestratorError, match="could not start"):
            backend.start(make_spec(deployment_name))
        assert backend.list() == []
    finally:
        docker_client.images.remove(broken)


@pytest.mark.docker
def test_retried_start_of_the_same_session_returns_the_existing_container(backend, deployment_name):
    spec = make_spec(deployment_name)
    first = backend.start(spec)
    assert backend.start(spec) == first
    assert [b.container_id for b in backend.list()] == [first]


@pytest.mark.docker
def test_the_engine_shows_no_session_uid_in_a_bots_labels(backend, docker_client, deployment_name):
    # The attack: anyone who may list containers (`docker ps --format '{{.Labels}}'`) reads labels.
    spec = make_spec(deployment_name)
    uid = spec.config["connectionId"]
    container_id = backend.start(spec)
    labels = docker_client.api.inspect_container(container_id)["Config"]["Labels"]
    assert uid not in json.dumps(labels)
    assert labels[LABEL_SESSION_UID] == session_digest(uid)


@pytest.mark.docker
def test_retried_start_finds_its_bot_started_before_labels_carried_digests(backend, docker_client,
                                                                           deployment_name):
    spec = make_spec(deployment_name)
    uid = spec.config["connectionId"]
    old_style = {**spec.labels, LABEL_SESSION_UID: uid}
    first = backend.start(dataclasses.replace(spec, labels=old_style))
    assert docker_client.api.inspect_container(first)["Config"]["Labels"][LABEL_SESSION_UID] == uid
    assert backend.start(spec) == first


@pytest.mark.docker
def test_start_with_a_name_taken_by_another_session_raises(backend, deployment_name):
    spec = make_spec(deployment_name, meeting_id=42)
    backend.start(spec)
    # Another session of the meeting whose name collides (a digest of 32 bits may).
    other = dataclasses.replace(make_spec(deployment_name, meeting_id=42), name=spec.name)
    with pytest.raises(OrchestratorError, match="already exists"):
        backend.start(other)


@pytest.mark.docker
def test_list_is_one_engine_request(backend, docker_client, deployment_name):
    for _ in range(3):
        backend.start(make_spec(deployment_name))
    calls = []
    hook = lambda response, *args, **kwargs: calls.append(response.request.path_url)  # noqa: E731
    backend.query.api.hooks["response"].append(hook)
    try:
        bots = backend.list()
    finally:
        backend.query.api.hooks["response"].remove(hook)
    assert len(bots) == 3
    assert len(calls) == 1 and calls[0].startswith("/v1.") and "/containers/json" in calls[0]


@pytest.mark.docker
def test_list_reports_created_at_of_the_container(backend, deployment_name):
    before = datetime.now(timezone.utc) - timedelta(seconds=2)
    container_id = backend.start(make_spec(deployment_name))
    info = find(backend.list(), container_id)
    assert before <= info.created_at <= datetime.now(timezone.utc) + timedelta(seconds=2)


@pytest.mark.docker
def test_created_container_is_listed_starting(backend, docker_client, deployment_name, bot_test_image):
    container = _ours(docker_client, deployment_name, bot_test_image)
    info = find(backend.list(), container.id)
    assert (info.status, info.raw_status) == (NormalizedStatus.STARTING, "created")


@pytest.mark.docker
def test_paused_bot_is_listed_up(backend, docker_client, deployment_name):
    container_id = backend.start(make_spec(deployment_name))
    docker_client.api.pause(container_id)
    try:
        info = find(backend.list(), container_id)
        assert (info.status, info.raw_status) == (NormalizedStatus.UP, "paused")
    finally:
        docker_client.api.unpause(container_id)


@pytest.mark.docker
def test_restarting_container_is_listed_starting(backend, docker_client, deployment_name, bot_test_image):
    container = _ours(docker_client, deployment_name, bot_test_image, command=["sh", "-c", "exit 3"],
                      restart_policy={"Name": "always"})
    container.start()
    info = wait_for(lambda: (b := find(backend.list(), container.id)) and b.raw_status == "restarting" and b,
                    interval=0.05, what="the restarting state")
    assert info.status is NormalizedStatus.STARTING


@pytest.mark.docker
def test_stop_kills_a_bot_that_ignores_sigterm_after_the_timeout(backend, docker_client, deployment_name,
                                                                 bot_test_image):
    container = _ours(docker_client, deployment_name, bot_test_image,
                      command=["sh", "-c", 'trap "" TERM; while :; do sleep 1; done'])
    container.start()
    started = time.monotonic()
    backend.stop(container.id, timeout=1)
    elapsed = time.monotonic() - started
    info = backend.inspect(container.id)
    assert (info.status, info.exit_code) == (NormalizedStatus.EXITED, 137)
    assert 0.9 <= elapsed < 10


@pytest.mark.docker
def test_remove_refuses_a_running_bot(backend, deployment_name):
    container_id = backend.start(make_spec(deployment_name))
    with pytest.raises(OrchestratorError):
        backend.remove(container_id)
    assert backend.inspect(container_id).status is NormalizedStatus.UP


@pytest.mark.docker
def test_inspect_reports_what_list_reports(backend, deployment_name):
    container_id = backend.start(make_spec(deployment_name, exit_code=4))
    listed = wait_for(lambda: (b := find(backend.list(), container_id)) and b.raw_status == "exited" and b,
                      what="the bot to exit")
    inspected = backend.inspect(container_id)
    assert (inspected.container_id, inspected.name, inspected.status, inspected.raw_status,
            inspected.labels, inspected.exit_code) == (
        listed.container_id, listed.name, listed.status, listed.raw_status, listed.labels, listed.exit_code)
    assert abs((inspected.created_at - listed.created_at).total_seconds()) < 1


class _CallbackRecorder(BaseHTTPRequestHandler):
    received: list = []

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.received.append((self.path, json.loads(body)))
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args):
        return


@pytest.mark.docker
def test_test_bot_speaks_the_callback_protocol(backend, docker_client, deployment_name, bot_test_image):
    # The host as seen from the default bridge: the gateway of a probe container.
    # (A running one: a stopped container has no network settings left.)
    probe = docker_client.containers.create(bot_test_image, command=["sleep", "30"])
    try:
        probe.start()
        probe.reload()
        gateway = probe.attrs["NetworkSettings"]["Gateway"]
        assert gateway, "the probe container has no bridge gateway"
    finally:
        probe.remove(force=True)
    recorder = type("Recorder", (_CallbackRecorder,), {"received": []})
    server = ThreadingHTTPServer(("0.0.0.0", 0), recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = f"http://{gateway}:{server.server_address[1]}/bots/internal/callback"
        spec = make_spec(deployment_name, botManagerCallbackUrl=f"{base}/exited")
        container_id = backend.start(spec)
        wait_for(lambda: len(recorder.received) >= 2, what="joining and started callbacks")
        backend.stop(container_id, timeout=5)
        wait_for(lambda: len(recorder.received) >= 3, what="the exited callback")
    finally:
        server.shutdown()
        server.server_close()
    uid = spec.config["connectionId"]
    assert recorder.received == [
        ("/bots/internal/callback/joining", {"connection_id": uid, "container_id": container_id[:12]}),
        ("/bots/internal/callback/started", {"connection_id": uid, "container_id": container_id[:12]}),
        ("/bots/internal/callback/exited", {"connection_id": uid, "exit_code": 0}),
    ]


SIGTERM_IGNORED = "SIGTERM ignored"


@pytest.fixture
def bystander(docker_client, bot_test_image):
    """A running container that is not a bot of ours: any other workload on the engine."""
    made = []

    def make(labels: dict | None = None):
        # It says so on each SIGTERM it gets (and ignores): the positive signal that one reached it.
        container = docker_client.containers.create(
            bot_test_image, command=["sh", "-c", f"trap 'echo {SIGTERM_IGNORED}' TERM; echo ready; "
                                                 "while :; do sleep 1 & wait $!; done"],
            labels=labels or {}, name=f"bm-bystander-{uuid.uuid4().hex[:8]}")
        made.append(container)
        container.start()
        wait_for(lambda: b"ready" in container.logs(), what="the bystander to be ready")
        return container

    yield make
    for container in made:
        container.remove(force=True)


@pytest.mark.docker
@pytest.mark.parametrize("labels", [
    {},                                    # a plain container of someone else
    {LABEL_DEPLOYMENT: "to-be-replaced"},  # claims our deployment but not to be managed by us
], ids=["plain", "unmanaged"])
@pytest.mark.parametrize("verb", ["terminate", "kill", "stop", "remove"])
def test_a_container_that_is_not_our_bot_survives_every_stop_order(backend, bystander, docker_client,
                                                                   deployment_name, labels, verb):
    # The attack: a task forged into the broker names any container on the engine,
    # by id or by name. Our backend refuses it and the container keeps running.
    labels = {k: deployment_name for k in labels}
    container = bystander(labels)
    for target in (container.id, container.name):
        with pytest.raises(NotOurBotError):
            backend.stop(target, timeout=1) if verb == "stop" else getattr(backend, verb)(target)
    # Its owner's SIGTERM, sent now, reaches it after any signal the refused orders sent: once it
    # says it got one, a SIGTERM of ours would show as another, and a SIGKILL or a removal would
    # have left no container to get it.
    docker_client.api.kill(container.id, signal="SIGTERM")
    wait_for(lambda: SIGTERM_IGNORED.encode() in container.logs(), what="the bystander to get its owner's SIGTERM")
    assert container.logs().count(SIGTERM_IGNORED.encode()) == 1
    container.reload()
    assert container.status == "running"


# --- least privilege: a bot holds nothing if it escapes its page ----------------------------------
@pytest.mark.docker
def test_a_bot_runs_without_capabilities_new_privileges_or_unbounded_pids_and_memory(
        backend, docker_client, deployment_name):
    # An untrusted browser that breaks out of its page finds no capability to use, no setuid
    # binary that raises it, and cannot fork-bomb or eat the host's memory.
    container_id = backend.start(make_spec(deployment_name))
    host = docker_client.api.inspect_container(container_id)["HostConfig"]
    assert host["CapDrop"] == ["ALL"]
    assert not host.get("CapAdd")
    assert host["SecurityOpt"] == ["no-new-privileges:true"]
    assert host["PidsLimit"] == 1024
    assert host["Memory"] == 2 * 1024 ** 3


@pytest.mark.docker
def test_a_hardened_bot_still_runs_and_obeys_its_stop(backend, deployment_name):
    container_id = backend.start(make_spec(deployment_name))
    wait_for(lambda: (b := find(backend.list(), container_id)) and b.status is NormalizedStatus.UP,
             what="the bot to be Up")
    time.sleep(0.3)  # past its SIGTERM trap
    backend.stop(container_id, timeout=5)
    info = backend.inspect(container_id)
    assert (info.status, info.exit_code) == (NormalizedStatus.EXITED, 0)


@pytest.mark.docker
def test_capabilities_pids_and_memory_limits_follow_the_settings(bot_test_image, docker_cleanup,
                                                                 deployment_name, docker_client):
    backend = DockerOrchestrator.from_settings(docker_settings(
        deployment_name, bot_test_image, DOCKER_BOT_CAP_ADD=["NET_BIND_SERVICE"],
        DOCKER_BOT_PIDS_LIMIT=2048, DOCKER_BOT_MEM_LIMIT="512m"))
    container_id = backend.start(make_spec(deployment_name))
    host = docker_client.api.inspect_container(container_id)["HostConfig"]
    assert (host["CapDrop"], host["CapAdd"]) == (["ALL"], ["NET_BIND_SERVICE"])
    assert (host["PidsLimit"], host["Memory"]) == (2048, 512 * 1024 ** 2)
