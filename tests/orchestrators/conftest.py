"""Fixtures of the orchestrator tests: a real Docker engine, the test bot image, the Nomad and
Kubernetes fakes.

Docker tests carry the `docker` marker. Without an engine they skip with the reason, on a
developer's machine; under CI (setting CI, from the CI environment variable) such a skip is turned
into a failure, so a CI run cannot pass without having run them.
"""
from __future__ import annotations

import subprocess
import uuid
from pathlib import Path

import pytest
from django.conf import settings

from tests.orchestrators.kubernetes_fake import KubernetesFake
from tests.orchestrators.nomad_fake import NomadFake

REPO = Path(__file__).resolve().parents[2]
TEST_BOT_IMAGE = "botmanager-test-bot:latest"
BUILD_SCRIPT = REPO / "docker" / "bot-test-image" / "build.sh"
NOMAD_BOT_JOB = "botmanager-bot"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.skipped and settings.CI and item.get_closest_marker("docker") is not None:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = (f"Docker test skipped under CI, which must run it: {reason}\n"
                           f"(scripts/ci-docker.sh installs and starts dockerd; .ci/run calls it)")


def _docker_host() -> str:
    return settings.DOCKER_HOST or "unix:///var/run/docker.sock"


@pytest.fixture(scope="session")
def docker_client():
    """A client of the real engine, or a skip that says why there is none."""
    import docker.errors
    import requests.exceptions

    import docker

    try:
        client = docker.DockerClient(base_url=_docker_host(), version="auto", timeout=30)
        client.ping()
    except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
        pytest.skip(f"no Docker engine reachable at {_docker_host()} ({exc}); start one "
                    f"(scripts/ci-docker.sh) to run the Docker tests")
    yield client
    client.close()


@pytest.fixture(scope="session")
def bot_test_image(docker_client) -> str:
    """The busybox test bot image, rebuilt once per session (about a second) so it is never stale."""
    result = subprocess.run([str(BUILD_SCRIPT), TEST_BOT_IMAGE], capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        pytest.fail(f"building {TEST_BOT_IMAGE} failed:\n{result.stdout}\n{result.stderr}")
    return TEST_BOT_IMAGE


@pytest.fixture
def deployment_name() -> str:
    """A fresh deployment per test: tests never see each other's bots, nor a live stack's."""
    return f"test-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def docker_cleanup(docker_client, deployment_name):
    """Removes, after the test, every container labelled with the test's deployment(s)."""
    deployments = [deployment_name]
    yield deployments
    for name in deployments:
        for container in docker_client.containers.list(
                all=True, filters={"label": f"botmanager.deployment={name}"}, sparse=True):
            container.remove(force=True)


@pytest.fixture
def nomad_fake():
    fake = NomadFake()
    fake.start()
    fake.register_parameterized_job(NOMAD_BOT_JOB)
    yield fake
    fake.close()


KUBERNETES_NAMESPACE = "botmanager-bots"


@pytest.fixture
def kubernetes_fake(tmp_path):
    """The Kubernetes fake with the bots' namespace, and `kubeconfig_path`: a kubeconfig naming it."""
    fake = KubernetesFake()
    fake.start()
    fake.add_namespace(KUBERNETES_NAMESPACE)
    fake.kubeconfig_path = tmp_path / "kubeconfig"
    fake.kubeconfig_path.write_text(fake.kubeconfig())
    yield fake
    fake.close()
