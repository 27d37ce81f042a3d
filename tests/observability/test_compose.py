"""docker-compose.yml and the Dockerfile: the compose file validates with `docker-compose config`
(Debian's docker-compose package) and has the shape the deployment needs.

Without docker-compose the test skips, except in CI (setting CI), where a skip fails: CI installs
it (scripts/ci-compose.sh). Building the images needs a Docker engine and is done by
`make docker-build-check` (scripts/docker-build-check.sh), not here.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from django.conf import settings

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yml"
WORKERS = {"worker-lifecycle", "worker-orchestrator", "worker-webhooks", "worker-sweep"}
LONG_RUNNING = {"postgres", "redis", "web", "proxy", "docker-proxy", "beat"} | WORKERS
# compose refuses to start without these (no defaults: a published value would sign things).
SECRETS = {"SECRET_KEY": "s" * 40, "BOT_TOKEN_SECRET": "b" * 40, "ADMIN_API_TOKEN": "a" * 40,
           "POSTGRES_PASSWORD": "p" * 40, "REDIS_PASSWORD": "r" * 40}
APP = {"migrate", "web", "beat"} | WORKERS
# The services that reach the engine: web (GET /bots/status, /readyz), launches and stops, the sweep.
ENGINE = ("web", "worker-orchestrator", "worker-sweep")
# Whoever holds the socket is root on the host: the one service that starts bots, and the proxy.
SOCKET = {"worker-orchestrator", "docker-proxy"}
# Web and sweep only list and inspect, through the read-only proxy.
READ_ONLY = ("web", "worker-sweep")


def _compose_config(secrets: dict | None = None, **env) -> dict:
    binary = shutil.which("docker-compose")
    if binary is None:
        if settings.CI:
            pytest.fail("docker-compose is missing under CI (scripts/ci-compose.sh installs it)")
        pytest.skip("docker-compose is not installed (Debian: apt-get install docker-compose)")
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("COMPOSE_", "DOCKER_GID", "BASE_IMAGE"))}
    clean = {k: v for k, v in clean.items() if k not in SECRETS}
    result = subprocess.run([binary, "-f", str(COMPOSE_FILE), "config"], capture_output=True, text=True,
                            timeout=60, env={**clean, **(SECRETS if secrets is None else secrets), **env}, cwd=REPO)
    if secrets is not None and result.returncode != 0:
        return {"error": result.stderr}
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


@pytest.fixture(scope="module")
def config() -> dict:
    return _compose_config()


def test_the_compose_file_validates_and_has_every_service(config):
    assert set(config["services"]) == LONG_RUNNING | {"migrate", "simbot-image"}


def test_every_service_has_a_health_check(config):
    for name, service in config["services"].items():
        check = service.get("healthcheck")
        assert check and check.get("test") and not check.get("disable"), name
    assert config["services"]["web"]["healthcheck"]["test"] == ["CMD", "python", "-m", "botmanager.healthcheck", "web"]
    assert "pg_isready" in " ".join(config["services"]["postgres"]["healthcheck"]["test"])
    assert config["services"]["redis"]["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]
    for name in WORKERS:
        kind = name.removeprefix("worker-")
        assert config["services"][name]["healthcheck"]["test"][-2:] == ["worker", kind], name


def test_migrations_run_once_before_web_worker_and_beat(config):
    services = config["services"]
    assert services["migrate"]["command"][:3] == ["python", "manage.py", "migrate"]
    assert services["migrate"]["restart"] == "no"
    for name in ("web", "beat", *WORKERS):
        assert services[name]["depends_on"]["migrate"]["condition"] == "service_completed_successfully", name
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_every_long_running_service_restarts_on_failure_and_redis_keeps_its_queue(config):
    for name in LONG_RUNNING:
        assert config["services"][name]["restart"] in ("unless-stopped", "always", "on-failure"), name
    command = config["services"]["redis"]["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    assert command[command.index("--appendfsync") + 1] == "everysec"


def test_one_beat_one_web_with_gunicorn_and_one_worker_service_per_queue_kind(config):
    services = config["services"]
    beats = [n for n, s in services.items() if "beat" in (s.get("command") or [])]
    assert beats == ["beat"]
    assert "scale" not in services["beat"] and "replicas" not in services["beat"].get("deploy", {})
    assert services["web"]["command"][0] == "gunicorn"
    assert "python:botmanager.gunicorn_conf" in services["web"]["command"]
    from botmanager import workers

    assert {f"worker-{kind.name}" for kind in workers.kinds()} == WORKERS
    for name in WORKERS:
        assert services[name]["command"] == ["python", "-m", "botmanager.workers", name.removeprefix("worker-")]


def test_bots_are_launched_through_the_docker_socket_on_the_compose_network(config):
    services = config["services"]
    network = config["networks"]["botmanager"]["name"]
    for name in ENGINE:
        env = services[name]["environment"]
        assert env["ORCHESTRATOR"] == "docker"
        assert env["DOCKER_NETWORK"] == network
        assert env["PUBLIC_BASE_URL"] == "http://web:8000"
        assert env["REDIS_URL"] == f"redis://:{SECRETS['REDIS_PASSWORD']}@redis:6379/0"
    assert _mounts_the_socket(services["worker-orchestrator"]) and services["worker-orchestrator"]["group_add"]
    for name in APP:
        assert services[name]["environment"]["LOG_FORMAT"] == "json", name
        assert services[name]["image"] == services["web"]["image"]
        assert services[name]["build"]["dockerfile"] == "Dockerfile"
    bot_image = services["simbot-image"]
    assert bot_image["build"]["dockerfile"] == "Dockerfile.simbot"
    assert bot_image["image"] == services["worker-orchestrator"]["environment"]["BOT_IMAGE"]
    assert services["worker-orchestrator"]["depends_on"]["simbot-image"]["condition"] == \
        "service_completed_successfully"
    assert services["web"]["environment"]["PROMETHEUS_MULTIPROC_DIR"]


def _mounts_the_socket(service: dict) -> bool:
    return any("docker.sock" in (v if isinstance(v, str) else str(v.get("source"))) for v in service.get("volumes", []))


def test_only_the_service_that_starts_bots_and_the_read_only_proxy_hold_the_engine_socket(config):
    services = config["services"]
    assert {name for name, service in services.items() if _mounts_the_socket(service)} == SOCKET
    for name in READ_ONLY:
        assert not services[name].get("group_add"), name
        assert services[name]["environment"]["DOCKER_HOST"] == "tcp://docker-proxy:2375", name
        assert services[name]["depends_on"]["docker-proxy"]["condition"] == "service_healthy", name
    assert "DOCKER_HOST" not in services["worker-orchestrator"]["environment"]


def test_the_docker_proxy_serves_this_deployment_on_a_network_no_bot_is_on(config):
    services, networks = config["services"], config["networks"]
    proxy = services["docker-proxy"]
    command = proxy["command"]
    assert command[:3] == ["python", "-m", "orchestrators.docker_readonly_proxy"]
    assert command[command.index("--deployment") + 1] == services["web"]["environment"]["DEPLOYMENT_NAME"]
    assert command[command.index("--listen") + 1] == "0.0.0.0:2375"
    assert proxy["image"] == services["web"]["image"] and proxy["group_add"]
    assert not proxy.get("ports")
    # None of the service's secrets: it needs only the socket and its deployment name.
    assert not set(proxy.get("environment") or {}) & {*SECRETS, "DATABASE_URL", "REDIS_URL"}
    bots_network = services["worker-orchestrator"]["environment"]["DOCKER_NETWORK"]
    [proxy_network] = proxy["networks"]
    assert networks[proxy_network].get("internal") is True
    assert networks[proxy_network].get("name", proxy_network) != bots_network
    for name in READ_ONLY:
        assert proxy_network in services[name]["networks"], name


def test_the_base_image_is_a_build_argument(config):
    assert config["services"]["web"]["build"]["args"]["BASE_IMAGE"] == "python:3.11-slim"
    local = _compose_config(BASE_IMAGE="botmanager-python-base:3.11", DOCKER_GID="105",
                            COMPOSE_NETWORK_NAME="bm-test")
    for name in (*APP, "simbot-image", "docker-proxy"):
        assert local["services"][name]["build"]["args"]["BASE_IMAGE"] == "botmanager-python-base:3.11"
    assert local["services"]["worker-orchestrator"]["group_add"] == ["105"]
    assert local["services"]["worker-orchestrator"]["environment"]["DOCKER_NETWORK"] == "bm-test"
    dockerfile = (REPO / "Dockerfile").read_text()
    assert "ARG BASE_IMAGE=python:3.11-slim" in dockerfile and "FROM ${BASE_IMAGE}" in dockerfile
    assert "\nUSER botmanager" in dockerfile


def test_the_files_it_builds_from_exist():
    assert (REPO / "Dockerfile").exists()
    if not (REPO / "Dockerfile.simbot").exists():
        pytest.skip("Dockerfile.simbot is not in the tree yet")


@pytest.mark.parametrize("missing", sorted(SECRETS))
def test_compose_refuses_to_start_without_each_secret(missing):
    config = _compose_config(secrets={k: v for k, v in SECRETS.items() if k != missing})

    assert "error" in config and f"set {missing}" in config["error"]


def test_the_app_gets_the_secrets_from_the_environment_and_no_private_webhooks(config):
    for name in APP:
        env = config["services"][name]["environment"]
        for secret in ("SECRET_KEY", "BOT_TOKEN_SECRET", "ADMIN_API_TOKEN"):
            assert env[secret] == SECRETS[secret], (name, secret)
        assert env["WEBHOOK_ALLOW_PRIVATE_ADDRESSES"] == "false"
        assert "web" in env["ALLOWED_HOSTS"].split(",")


def test_only_the_buffering_proxy_is_published_and_on_loopback_by_default(config):
    services = config["services"]
    published = {name for name, service in services.items() if service.get("ports")}
    assert published == {"proxy"}
    [port] = services["proxy"]["ports"]
    if isinstance(port, str):  # docker-compose 1.x prints "127.0.0.1:8000:8000/tcp"
        host_ip, _published, target = port.split("/")[0].split(":")
        port = {"host_ip": host_ip, "target": int(target)}
    assert port["host_ip"] == "127.0.0.1" and port["target"] == 8000
    assert services["proxy"]["build"]["dockerfile"] == "docker/nginx/Dockerfile"
    assert services["proxy"]["build"]["args"]["BASE_IMAGE"] == services["web"]["build"]["args"]["BASE_IMAGE"]
    nginx = (REPO / "docker/nginx/nginx.conf").read_text()
    assert "proxy_pass http://web;" in nginx and "proxy_request_buffering on;" in nginx
    assert "client_body_timeout" in nginx and "client_max_body_size 1m;" in nginx
    assert "apt-get install" in (REPO / "docker/nginx/Dockerfile").read_text()


def test_web_believes_x_forwarded_for_from_the_proxy_service_alone(config):
    """Bots share the network: a CIDR of it would let a bot pick the address it is counted under."""
    assert config["services"]["web"]["environment"]["TRUSTED_PROXY_ADDRESSES"] == "proxy"
    assert "proxy" in config["services"]
    assert "X-Forwarded-For $proxy_add_x_forwarded_for" in (REPO / "docker/nginx/nginx.conf").read_text()


def test_redis_takes_its_password_from_a_file_not_the_command_line(config):
    redis = config["services"]["redis"]
    command = " ".join(redis["command"])
    assert "requirepass" in command and SECRETS["REDIS_PASSWORD"] not in command
    assert redis["environment"]["REDISCLI_AUTH"] == SECRETS["REDIS_PASSWORD"]


def test_the_proxy_passes_the_event_stream_on_unbuffered():
    nginx = (REPO / "docker/nginx/nginx.conf").read_text()
    location = nginx.split("location = /events/stream {", 1)[1].split("}", 1)[0]
    assert "proxy_pass http://web;" in location
    assert "proxy_buffering off;" in location
    # Longer than the heartbeat (EVENT_STREAM_HEARTBEAT_SECONDS, 15 s): a quiet stream stays open.
    assert "proxy_read_timeout 3600s;" in location
