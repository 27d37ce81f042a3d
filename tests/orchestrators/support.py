"""Helpers shared by the orchestrator tests: bot specs, settings objects, polling."""
from __future__ import annotations

import itertools
import time
import uuid
from types import SimpleNamespace

from django.conf import settings

from orchestrators.base import BotSpec, bot_labels, bot_name

_meeting_ids = itertools.count(int(time.time()) % 100_000 * 10)


def make_spec(deployment: str, *, meeting_id: int | None = None, session_uid: str | None = None,
              exit_code: int | None = None, user_id: int = 7, **config) -> BotSpec:
    """A spec like the launcher's. `exit_code`: the test bots exit with it right after starting."""
    meeting_id = meeting_id if meeting_id is not None else next(_meeting_ids)
    session_uid = session_uid or str(uuid.uuid4())
    name = bot_name(meeting_id, session_uid)
    bot_config = {
        "meeting_id": meeting_id,
        "platform": "google_meet",
        "meetingUrl": "https://meet.google.com/abc-defg-hij",
        "nativeMeetingId": "abc-defg-hij",
        "connectionId": session_uid,
        "container_name": name,
        **config,
    }
    if exit_code is not None:
        bot_config["test_exit_code"] = exit_code
    labels = bot_labels(deployment=deployment, meeting_id=meeting_id, user_id=user_id, session_uid=session_uid)
    return BotSpec(name=name, config=bot_config, labels=labels)


def docker_settings(deployment: str, image: str, **overrides) -> SimpleNamespace:
    values = {
        "BOT_IMAGE": image,
        "DEPLOYMENT_NAME": deployment,
        "DOCKER_NETWORK": "",
        "DOCKER_BOT_MEM_LIMIT": settings.DOCKER_BOT_MEM_LIMIT,
        "DOCKER_BOT_NANO_CPUS": 0,
        "DOCKER_BOT_PIDS_LIMIT": settings.DOCKER_BOT_PIDS_LIMIT,
        "DOCKER_BOT_CAP_ADD": settings.DOCKER_BOT_CAP_ADD,
        "DOCKER_HOST": settings.DOCKER_HOST,
        "ORCHESTRATOR_TIMEOUT_SECONDS": 30,
        "ORCHESTRATOR_QUERY_TIMEOUT_SECONDS": 10,
    }
    values.update(overrides)
    return SimpleNamespace(**values)


def nomad_settings(address: str, deployment: str, **overrides) -> SimpleNamespace:
    values = {
        "NOMAD_ADDR": address,
        "NOMAD_BOT_JOB": "botmanager-bot",
        "NOMAD_BOT_VAR_PREFIX": "botmanager/bots",
        "NOMAD_TOKEN": "",
        "NOMAD_NAMESPACE": "",
        "DEPLOYMENT_NAME": deployment,
        "ORCHESTRATOR_TIMEOUT_SECONDS": 5,
        "ORCHESTRATOR_QUERY_TIMEOUT_SECONDS": 5,
    }
    values.update(overrides)
    return SimpleNamespace(**values)


def find(bots, container_id: str):
    return next((b for b in bots if b.container_id == container_id), None)


def kubernetes_settings(kubeconfig, deployment: str, **overrides) -> SimpleNamespace:
    values = {
        "KUBERNETES_KUBECONFIG": str(kubeconfig),
        "KUBERNETES_CONTEXT": "",
        "KUBERNETES_IN_CLUSTER": False,
        "KUBERNETES_NAMESPACE": "botmanager-bots",
        "KUBERNETES_POD_TEMPLATE": "",
        "KUBERNETES_CLUSTER_ID": "",
        "KUBERNETES_IMAGE_PULL_TIMEOUT_SECONDS": 300,
        "BOT_IMAGE": "botmanager-simbot:latest",
        "BOT_STOP_TIMEOUT_SECONDS": 10,
        "DEPLOYMENT_NAME": deployment,
        "ORCHESTRATOR_TIMEOUT_SECONDS": 5,
        "ORCHESTRATOR_QUERY_TIMEOUT_SECONDS": 5,
    }
    values.update(overrides)
    return SimpleNamespace(**values)
