"""The read-only Docker proxy (orchestrators/docker_readonly_proxy.py) in front of the real engine:
the web and the sweep list and inspect their bots through it, and whoever holds its address (a
compromised web) can do nothing else: no create, signal, exec, remove, archive, image listing, no
other deployment's container, no bot's BOT_CONFIG.
"""
from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from urllib.parse import parse_qs, urlsplit

import docker.errors
import pytest

import docker
from orchestrators.base import LABEL_DEPLOYMENT, LABEL_MANAGED
from orchestrators.docker import DockerOrchestrator
from orchestrators.docker_readonly_proxy import Refused, make_server, route
from tests.orchestrators.conftest import _docker_host
from tests.orchestrators.support import docker_settings, find, make_spec


@pytest.fixture
def proxy_url(docker_client, deployment_name):
    server = make_server(("127.0.0.1", 0), deployment_name, _docker_host(), timeout=10)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"tcp://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def direct(bot_test_image, docker_cleanup, deployment_name) -> DockerOrchestrator:
    """The backend as worker-orchestrator has it: on the engine's socket."""
    return DockerOrchestrator.from_settings(docker_settings(deployment_name, bot_test_image))


@pytest.fixture
def proxied(proxy_url, bot_test_image, deployment_name) -> DockerOrchestrator:
    """The backend as web and sweep have it: DOCKER_HOST=tcp://docker-proxy:2375."""
    return DockerOrchestrator.from_settings(docker_settings(deployment_name, bot_test_image, DOCKER_HOST=proxy_url))


@pytest.fixture
def attacker(proxy_url) -> docker.APIClient:
    """The docker SDK's low-level client on the proxy's address, as a compromised web would use it."""
    client = docker.APIClient(base_url=proxy_url, version="auto", timeout=10)
    yield client
    client.close()


def _get(proxy_url: str, path: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(proxy_url.replace("tcp://", "http://") + path, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


# --- what passes ----------------------------------------------------------------------------------

@pytest.mark.docker
def test_list_and_inspect_through_the_proxy_report_what_the_engine_reports(direct, proxied, deployment_name):
    container_id = direct.start(make_spec(deployment_name))

    listed = find(proxied.list(), container_id)
    assert listed is not None and listed == find(direct.list(), container_id)
    inspected = proxied.inspect(container_id)
    assert inspected is not None and inspected == direct.inspect(container_id)


@pytest.mark.docker
def test_the_engine_id_is_the_same_through_the_proxy(direct, proxied):
    # The sweep's instance (and so its instance queue) must be worker-orchestrator's.
    assert proxied.instance_id() == direct.instance_id()


@pytest.mark.docker
def test_info_answers_the_engine_id_and_nothing_of_the_host(proxy_url, docker_client):
    status, body = _get(proxy_url, "/info")

    assert status == 200 and body == {"ID": docker_client.info()["ID"]}


@pytest.mark.docker
def test_inspect_through_the_proxy_never_shows_the_bots_environment(direct, proxy_url, deployment_name):
    container_id = direct.start(make_spec(deployment_name, language="en"))

    for path in (f"/containers/{container_id}/json", f"/v1.41/containers/{container_id}/json"):
        status, body = _get(proxy_url, path)
        assert status == 200 and body["Id"] == container_id
        assert "Env" not in body["Config"]
        assert "BOT_CONFIG" not in json.dumps(body)


@pytest.mark.docker
def test_the_docker_cli_ping_passes(proxy_url):
    request = urllib.request.Request(proxy_url.replace("tcp://", "http://") + "/_ping", method="HEAD")
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200 and response.headers["Api-Version"]


# --- what is refused ------------------------------------------------------------------------------

@pytest.fixture
def foreign(docker_client, docker_cleanup, bot_test_image, deployment_name) -> str:
    """A running container of another deployment on the same engine, BOT_CONFIG in its env."""
    other = f"{deployment_name}-other"
    docker_cleanup.append(other)
    container = docker_client.containers.run(
        bot_test_image, ["sleep", "300"], detach=True, environment={"BOT_CONFIG": '{"token": "secret"}'},
        labels={LABEL_MANAGED: "true", LABEL_DEPLOYMENT: other})
    return container.id


@pytest.mark.docker
def test_another_deployments_container_is_not_found_through_the_proxy(foreign, proxied, proxy_url):
    assert proxied.inspect(foreign) is None
    status, body = _get(proxy_url, f"/containers/{foreign}/json")
    assert status == 404 and body == {"message": f"No such container: {foreign}"}


@pytest.mark.docker
def test_a_listing_asking_for_another_deployment_gets_none_of_its_containers(foreign, attacker, deployment_name):
    asked = attacker.containers(all=True, filters={"label": f"{LABEL_DEPLOYMENT}={deployment_name}-other"})
    everything = attacker.containers(all=True)

    assert asked == []
    assert foreign not in {c["Id"] for c in everything}


_WRITES = {
    "create": lambda api, bot, image: api.create_container(image, ["sleep", "1"]),
    "kill": lambda api, bot, image: api.kill(bot),
    "stop": lambda api, bot, image: api.stop(bot, timeout=0),
    "exec": lambda api, bot, image: api.exec_create(bot, ["cat", "/proc/1/environ"]),
    "remove": lambda api, bot, image: api.remove_container(bot, force=True),
    "archive": lambda api, bot, image: api.get_archive(bot, "/"),
    "images": lambda api, bot, image: api.images(),
    "logs": lambda api, bot, image: api.logs(bot),
    "system_df": lambda api, bot, image: api.df(),
    "networks": lambda api, bot, image: api.networks(),
}


@pytest.mark.docker
@pytest.mark.parametrize("call", sorted(_WRITES))
def test_everything_but_listing_and_inspecting_is_refused(call, direct, attacker, docker_client, deployment_name,
                                                          bot_test_image):
    bot = direct.start(make_spec(deployment_name))
    before = {c.id for c in docker_client.containers.list(all=True)}

    with pytest.raises(docker.errors.APIError) as refused:
        _WRITES[call](attacker, bot, bot_test_image)

    assert refused.value.status_code == 403
    assert "read-only Docker proxy refuses" in refused.value.explanation
    assert docker_client.containers.get(bot).status == "running"
    assert {c.id for c in docker_client.containers.list(all=True)} == before


@pytest.mark.docker
@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "HEAD", "PATCH"])
def test_every_other_method_gets_a_json_403(method, proxy_url, direct, deployment_name):
    bot = direct.start(make_spec(deployment_name))
    request = urllib.request.Request(proxy_url.replace("tcp://", "http://") + f"/containers/{bot}/json",
                                     method=method, data=b"{}" if method in ("POST", "PUT", "PATCH") else None)
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)

    assert refused.value.code == 403
    assert refused.value.headers["Content-Type"] == "application/json"
    if method != "HEAD":
        assert method in json.loads(refused.value.read())["message"]


# --- the policy alone -----------------------------------------------------------------------------

@pytest.mark.parametrize("target", [
    "/containers/../images/json", "/containers/%2e%2e/images/json", "/v1.43/containers/x/archive",
    "/containers/x/json/../../images/json", "/v1.43/images/json", "/containers/.x/json", "/secrets",
    "/v1.43/events",
])
def test_no_path_escapes_the_allowed_routes(target):
    with pytest.raises(Refused) as refused:
        route("GET", target, "dep")

    assert refused.value.status == 403


@pytest.mark.parametrize("target", ["/containers/json", "/v1.43/containers/x/json", "/info", "/version"])
def test_head_passes_for_the_ping_only(target):
    assert route("HEAD", "/v1.43/_ping", "dep").kind == "ping"
    with pytest.raises(Refused):
        route("HEAD", target, "dep")


def test_the_listing_always_carries_the_deployment_labels_whatever_the_caller_filters():
    for query in ("", "?filters=%7B%7D", '?filters={"label":["a=b"],"status":["exited"]}',
                  '?filters={"label":{"botmanager.deployment=other":true}}'):
        upstream = route("GET", f"/v1.43/containers/json{query}", "dep")
        filters = json.loads(parse_qs(urlsplit(upstream.path).query)["filters"][0])
        assert {"botmanager.managed=true", "botmanager.deployment=dep"} <= set(filters["label"])


def test_a_listing_with_filters_that_are_not_json_is_a_400():
    with pytest.raises(Refused) as refused:
        route("GET", "/containers/json?filters=nope", "dep")

    assert refused.value.status == 400
