"""`ORCHESTRATOR=docker make run`, as docs/orchestrators.md says and nothing more: the real
`python -m devstack.run` (embedded Redis of its own, the test database) with the Docker
backend and its defaults (DOCKER_NETWORK unset: `host`, since PUBLIC_BASE_URL is a loopback URL),
bots in containers of the simulated bot's image (Dockerfile.simbot, built by
`make docker-build-check`, which CI runs first). A whole meeting: POST -> active -> PUT config (the
bot hears it) -> DELETE -> completed, its container removed; a SIGKILLed container -> failed with
its exit code in data.last_error; `manage.py remove_bots` leaves no bot of the deployment.

Without the simbot image (a developer's machine that never built it) the registry-free test bot
(docker/bot-test-image: callbacks only, no Redis) stands in and the config check is left out;
under CI the simbot image must be there.
"""
from __future__ import annotations

import subprocess
import sys
import time

import pytest
import requests
from django.conf import settings

from tests.waiting import wait_for
from tests.test_runstack import REPO, runstack  # noqa: F401  (the fixture)

pytestmark = [pytest.mark.docker, pytest.mark.django_db(transaction=True)]
SIMBOT_IMAGES = ("botmanager-simbot:check", "botmanager-simbot:latest")  # make docker-build-check, docs/orchestrators.md
KNOBS = {"BOT_STOP_DELAY_SECONDS": "5", "BOT_STOP_GRACE_SECONDS": "2", "BOT_STOP_TIMEOUT_SECONDS": "2",
         "ORPHAN_SWEEP_INTERVAL_SECONDS": "2", "ORPHAN_GRACE_SECONDS": "2", "LOG_LEVEL": "INFO"}


@pytest.fixture
def bot_image(docker_client, bot_test_image) -> str:
    import docker.errors

    for tag in SIMBOT_IMAGES:
        try:
            docker_client.images.get(tag)
            return tag
        except docker.errors.ImageNotFound:
            continue
    if settings.CI:
        pytest.fail(f"none of {SIMBOT_IMAGES} on the engine: CI runs `make docker-build-check` before the tests")
    return bot_test_image


def _bots(docker_client, deployment: str):
    return docker_client.containers.list(all=True, filters={"label": f"botmanager.deployment={deployment}"},
                                         sparse=True)


def test_make_run_with_the_docker_backend_runs_whole_meetings(runstack, docker_client, docker_cleanup,  # noqa: F811
                                                              deployment_name, bot_image):
    simbot = bot_image != "botmanager-test-bot:latest"
    stack = runstack(ORCHESTRATOR="docker", DEPLOYMENT_NAME=deployment_name, BOT_IMAGE=bot_image, **KNOBS)
    for name in ("DOCKER_NETWORK", "DOCKER_HOST"):
        stack.env.pop(name, None)  # the defaults, as a user of `make run` has them
    stack.start()
    base = f"http://127.0.0.1:{stack.port}"
    api = requests.Session()
    api.headers["X-API-Key"] = stack.demo_key()
    timings = {}

    def meeting(meeting_id: int) -> dict:
        return api.get(f"{base}/meetings/{meeting_id}", timeout=10).json()

    def wait_status(meeting_id: int, wanted: set[str], timeout: float) -> dict:
        return wait_for(lambda: (m := meeting(meeting_id))["status"] in wanted and m, timeout=timeout,
                        interval=0.2, what=f"meeting {meeting_id} to be {wanted}: {meeting(meeting_id)}\n{stack.tail()}")

    # 1. A whole cooperative meeting.
    started = time.monotonic()
    created = api.post(f"{base}/bots", json={"platform": "google_meet", "native_meeting_id": "abc-defg-hij",
                                             "bot_name": "Docker E2E"}, timeout=10)
    assert created.status_code == 201, created.text
    first = created.json()["id"]
    active = wait_status(first, {"active"}, 60)
    timings["POST -> active"] = time.monotonic() - started
    container = docker_client.containers.get(active["bot_container_id"])
    assert container.attrs["HostConfig"]["NetworkMode"] == "host"
    running = api.get(f"{base}/bots/status", timeout=10).json()["running_bots"]
    assert [b["container_id"] for b in running] == [container.id]
    assert running[0]["normalized_status"] == "Up"
    assert all(k.startswith("botmanager.") for k in running[0]["labels"]), running[0]["labels"]

    assert api.put(f"{base}/bots/google_meet/abc-defg-hij/config", json={"language": "de"},
                   timeout=10).status_code == 202
    if simbot:
        wait_for(lambda: b"reconfigured: language=de" in container.logs(), timeout=15,
                 what=f"the bot to hear the new config\n{container.logs().decode(errors='replace')[-2000:]}")

    stopped_at = time.monotonic()
    assert api.delete(f"{base}/bots/google_meet/abc-defg-hij", timeout=10).status_code == 202
    final = wait_status(first, {"completed", "failed"}, 30)
    timings["DELETE -> completed"] = time.monotonic() - stopped_at
    assert (final["status"], final["data"]["completion_reason"]) == ("completed", "stopped"), final
    if simbot:  # it left on the leave command and said so itself
        assert [t for t in final["transitions"] if t["applied"]][-1]["source"] == "bot_callback", final
    wait_for(lambda: not _bots(docker_client, deployment_name), timeout=30,
             what="the sweep to remove the exited container")
    timings["DELETE -> container removed"] = time.monotonic() - stopped_at

    # 2. A bot killed under its meeting: failed, with its exit code for the user.
    created = api.post(f"{base}/bots", json={"platform": "teams", "native_meeting_id": "1234567890"}, timeout=10)
    second = created.json()["id"]
    active = wait_status(second, {"active"}, 60)
    killed_at = time.monotonic()
    docker_client.containers.get(active["bot_container_id"]).kill()  # SIGKILL: no exit callback
    failed = wait_status(second, {"completed", "failed"}, 30)
    timings["SIGKILL -> failed"] = time.monotonic() - killed_at
    assert (failed["status"], failed["data"]["failure_stage"]) == ("failed", "active"), failed
    assert "exit code 137" in failed["data"]["last_error"], failed["data"]
    wait_for(lambda: not _bots(docker_client, deployment_name), timeout=30,
             what="the sweep to remove the killed container")

    # 3. Taking the deployment down: every bot stopped and removed, before the services go.
    for n, native in enumerate(("abc-defg-aaa", "abc-defg-bbb")):
        created = api.post(f"{base}/bots", json={"platform": "google_meet", "native_meeting_id": native,
                                                 "bot_name": "simbot:ignore_leave" if n else "Docker E2E"}, timeout=10)
        wait_status(created.json()["id"], {"active"}, 60)
    assert len(_bots(docker_client, deployment_name)) == 2
    removing = time.monotonic()
    result = subprocess.run([sys.executable, "manage.py", "remove_bots", "--timeout", "2"], cwd=REPO,
                            env=stack.env, capture_output=True, text=True, timeout=120)
    timings["remove_bots (one bot ignores SIGTERM)"] = time.monotonic() - removing
    assert result.returncode == 0, result.stdout + result.stderr
    assert "removed 2 bot(s)" in result.stdout, result.stdout
    assert not _bots(docker_client, deployment_name)
    print("\ndocker backend under make run (" + bot_image + "): "
          + ", ".join(f"{k} {v:.1f} s" for k, v in timings.items()))
