"""The Kubernetes backend's own behaviour (the shared contract is in test_contract.py), through the
official client over HTTP against tests/orchestrators/kubernetes_fake.py."""
from __future__ import annotations

import json
import math
import time
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest
import yaml
from django.utils import timezone

from orchestrators import kubernetes as k8s
from orchestrators import registry
from orchestrators.base import LABEL_SESSION_UID, NormalizedStatus, NotOurBotError, OrchestratorError
from orchestrators.kubernetes import API_CALLS, FINALIZER, KubernetesOrchestrator
from tests.orchestrators.conftest import KUBERNETES_NAMESPACE as NS
from tests.orchestrators.support import find, kubernetes_settings, make_spec

REPO = Path(__file__).resolve().parents[2]
EXAMPLE_TEMPLATE = REPO / "docs" / "examples" / "kubernetes-pod-template.yaml"


@pytest.fixture
def fake(kubernetes_fake):
    return kubernetes_fake


@pytest.fixture
def build(fake, deployment_name):
    def build(**overrides) -> KubernetesOrchestrator:
        return KubernetesOrchestrator.from_settings(
            kubernetes_settings(fake.kubeconfig_path, overrides.pop("DEPLOYMENT_NAME", deployment_name), **overrides))
    return build


@pytest.fixture
def backend(build):
    return build()


def _pod(fake, name):
    return fake.pods[(NS, name)]


def _bot_env(pod) -> dict:
    return {e["name"]: e for e in pod["spec"]["containers"][0].get("env", [])}


def _deletes(fake) -> list:
    return [c for c in fake.calls if (c.resource, c.verb) == ("pods", "delete")]


# --- the config Secret ------------------------------------------------------------------------------
def test_bot_config_is_never_in_the_pod_spec(fake, backend, deployment_name):
    spec = make_spec(deployment_name, meetingUrl="https://meet.google.com/sec-rets-xyz")
    name = backend.start(spec)
    pod_text = json.dumps(_pod(fake, name))
    assert spec.config["connectionId"] not in pod_text
    assert "sec-rets-xyz" not in pod_text
    assert _bot_env(_pod(fake, name))["BOT_CONFIG"] == {
        "name": "BOT_CONFIG", "valueFrom": {"secretKeyRef": {"name": f"{name}-config", "key": "BOT_CONFIG"}}}


def test_the_config_secret_holds_the_config_and_is_owned_by_the_pod(fake, backend, deployment_name):
    spec = make_spec(deployment_name)
    name = backend.start(spec)
    owners = fake.secrets[(NS, f"{name}-config")]["metadata"]["ownerReferences"]
    assert owners == [{"apiVersion": "v1", "kind": "Pod", "name": name, "uid": _pod(fake, name)["metadata"]["uid"]}]
    assert fake.secret_config(f"{name}-config", NS) == spec.config


def test_remove_deletes_the_pod_and_its_secret(fake, backend, deployment_name):
    name = backend.start(make_spec(deployment_name, exit_code=0))
    fake.finish(name, NS, 0)
    backend.remove(name)
    assert (NS, name) not in fake.pods
    assert (NS, f"{name}-config") not in fake.secrets


def test_a_retried_start_finds_its_own_pod(fake, backend, deployment_name):
    spec = make_spec(deployment_name)
    first = backend.start(spec)
    uid = _pod(fake, first)["metadata"]["uid"]
    assert backend.start(spec) == first
    assert _pod(fake, first)["metadata"]["uid"] == uid
    assert len(fake.pods) == 1


def test_a_start_whose_secret_cannot_be_created_fails_and_leaves_no_pod(fake, backend, deployment_name):
    spec = make_spec(deployment_name)
    fake.fail_next(503, "ServiceUnavailable", "etcd leader changed", method="POST", resource="secrets")
    with pytest.raises(OrchestratorError, match="etcd leader changed"):
        backend.start(spec)
    assert (NS, spec.name) not in fake.pods


def test_a_start_retried_after_a_crash_before_its_secret_creates_the_secret(fake, backend, deployment_name):
    spec = make_spec(deployment_name)
    # The worker died between the two calls: the pod exists, its secret does not.
    backend.core.create_namespaced_pod(NS, backend.pod_manifest(spec))
    assert backend.start(spec) == spec.name
    assert fake.secret_config(f"{spec.name}-config", NS) == spec.config


def test_a_start_replaces_a_stale_secret_of_an_older_pod_of_that_name(fake, backend, deployment_name):
    spec = make_spec(deployment_name)
    name = backend.start(spec)
    fake.gc_enabled = False  # the pod goes (by hand, through the API); the GC has not run yet
    backend.core.patch_namespaced_pod(name, NS, [{"op": "remove", "path": "/metadata/finalizers/0"}])
    backend.core.delete_namespaced_pod(name, NS, grace_period_seconds=0)
    backend.start(spec)
    owners = fake.secrets[(NS, f"{name}-config")]["metadata"]["ownerReferences"]
    assert [o["uid"] for o in owners] == [_pod(fake, name)["metadata"]["uid"]]


def test_a_start_refuses_a_pod_of_that_name_from_another_session(fake, backend, deployment_name):
    spec = make_spec(deployment_name)
    name = backend.start(spec)
    other = replace(spec, labels={**spec.labels, LABEL_SESSION_UID: "0" * 64})
    with pytest.raises(OrchestratorError, match="not this session's bot"):
        backend.start(other)
    assert fake.secret_config(f"{name}-config", NS) == spec.config


# --- labels -----------------------------------------------------------------------------------------
def test_labels_that_are_no_label_values_are_annotations_and_listed_as_labels(fake, backend, deployment_name):
    spec = make_spec(deployment_name)
    name = backend.start(spec)
    meta = _pod(fake, name)["metadata"]
    assert LABEL_SESSION_UID not in meta["labels"]
    assert meta["annotations"][LABEL_SESSION_UID] == spec.labels[LABEL_SESSION_UID]  # 64 hex: no label value
    assert find(backend.list(), name).labels == {**spec.labels}


def test_a_deployment_name_that_is_no_label_value_is_refused_at_start_up(build):
    with pytest.raises(ValueError, match="DEPLOYMENT_NAME"):
        build(DEPLOYMENT_NAME="x" * 64)


# --- the pod template --------------------------------------------------------------------------------
TEMPLATE = {
    "apiVersion": "v1", "kind": "Pod",
    "metadata": {"labels": {"team": "meetings"}, "annotations": {"cluster-autoscaler.kubernetes.io/safe-to-evict": "false"}},
    "spec": {
        "serviceAccountName": "bot",
        "automountServiceAccountToken": False,
        "nodeSelector": {"pool": "bots"},
        "tolerations": [{"key": "bots", "operator": "Exists", "effect": "NoSchedule"}],
        "imagePullSecrets": [{"name": "registry"}],
        "securityContext": {"runAsNonRoot": True, "runAsUser": 1000},
        "containers": [{"name": "bot", "image": "registry.example.com/bot:1.2",
                        "resources": {"limits": {"memory": "2Gi"}, "requests": {"cpu": "500m"}},
                        "env": [{"name": "LOG_LEVEL", "value": "info"}]}],
    },
}


def _template_file(tmp_path, template) -> str:
    path = tmp_path / "pod.yaml"
    path.write_text(template if isinstance(template, str) else yaml.safe_dump(template))
    return str(path)


def test_the_pod_is_the_operators_template_with_ours_filled_in(fake, build, tmp_path, deployment_name):
    backend = build(KUBERNETES_POD_TEMPLATE=_template_file(tmp_path, TEMPLATE), BOT_STOP_TIMEOUT_SECONDS=25)
    name = backend.start(make_spec(deployment_name))
    pod = _pod(fake, name)
    for key in ("serviceAccountName", "automountServiceAccountToken", "nodeSelector", "tolerations",
                "imagePullSecrets", "securityContext"):
        assert pod["spec"][key] == TEMPLATE["spec"][key]
    container = pod["spec"]["containers"][0]
    assert (container["image"], container["resources"]) == ("registry.example.com/bot:1.2", TEMPLATE["spec"]["containers"][0]["resources"])
    assert _bot_env(pod)["LOG_LEVEL"] == {"name": "LOG_LEVEL", "value": "info"}
    assert pod["metadata"]["labels"]["team"] == "meetings"
    assert pod["metadata"]["annotations"]["cluster-autoscaler.kubernetes.io/safe-to-evict"] == "false"
    assert (pod["spec"]["restartPolicy"], pod["spec"]["terminationGracePeriodSeconds"]) == ("Never", 25)
    assert pod["metadata"]["finalizers"] == [FINALIZER]


def test_without_a_template_the_bot_runs_bot_image(fake, build, deployment_name):
    name = build(BOT_IMAGE="registry.example.com/simbot:7").start(make_spec(deployment_name))
    assert [c["image"] for c in _pod(fake, name)["spec"]["containers"]] == ["registry.example.com/simbot:7"]


def test_the_bot_container_is_the_one_named_bot(fake, build, tmp_path, deployment_name):
    template = {"spec": {"containers": [{"name": "sidecar", "image": "proxy:1"}, {"name": "bot", "image": "bot:1"}]}}
    name = build(KUBERNETES_POD_TEMPLATE=_template_file(tmp_path, template)).start(make_spec(deployment_name))
    sidecar, bot = _pod(fake, name)["spec"]["containers"]
    assert "env" not in sidecar and [e["name"] for e in bot["env"]] == ["BOT_CONFIG"]


def test_active_deadline_seconds_comes_from_the_specs_deadline(fake, backend, deployment_name):
    spec = replace(make_spec(deployment_name), deadline_seconds=16_500.2)
    assert _pod(fake, backend.start(spec))["spec"]["activeDeadlineSeconds"] == 16_501


def test_a_spec_without_a_deadline_leaves_the_pod_without_one(fake, backend, deployment_name):
    assert "activeDeadlineSeconds" not in _pod(fake, backend.start(make_spec(deployment_name)))["spec"]


def test_the_documented_example_template_makes_a_pod_the_api_accepts(fake, build, deployment_name):
    name = build(KUBERNETES_POD_TEMPLATE=str(EXAMPLE_TEMPLATE)).start(make_spec(deployment_name))
    assert _pod(fake, name)["spec"]["containers"][0]["image"] == yaml.safe_load(
        EXAMPLE_TEMPLATE.read_text())["spec"]["containers"][0]["image"]


@pytest.mark.parametrize("text, complaint", [
    ("spec: [unclosed", "is not YAML"),
    ("- a list", "one Pod manifest"),
    (yaml.safe_dump({"apiVersion": "apps/v1", "kind": "Deployment", "spec": {}}), "kind: Pod"),
    (yaml.safe_dump({"spec": {"containers": []}}), "non-empty list"),
    (yaml.safe_dump({"spec": {"restartPolicy": "Always", "containers": [{"name": "bot"}]}}), "restartPolicy must be Never"),
    (yaml.safe_dump({"spec": {"containers": [{"name": "bot", "env": [{"name": "BOT_CONFIG", "value": "x"}]}]}}),
     "without BOT_CONFIG"),
])
def test_a_bad_template_is_refused_at_start_up_with_the_reason(build, tmp_path, text, complaint):
    with pytest.raises(ValueError, match=complaint):
        build(KUBERNETES_POD_TEMPLATE=_template_file(tmp_path, text))


def test_the_service_refuses_to_start_with_a_bad_template(tmp_path):
    from types import SimpleNamespace

    from botmanager import checks

    path = _template_file(tmp_path, "- not a pod")
    assert checks.orchestrator_problems(SimpleNamespace(ORCHESTRATOR="kubernetes", KUBERNETES_POD_TEMPLATE=path)) == [
        f"KUBERNETES_POD_TEMPLATE {path!r} must be one Pod manifest (a mapping), not list."]
    assert checks.orchestrator_problems(SimpleNamespace(ORCHESTRATOR="docker", KUBERNETES_POD_TEMPLATE=path)) == []


def test_a_missing_template_file_is_refused_at_start_up(build, tmp_path):
    with pytest.raises(ValueError, match="cannot be read"):
        build(KUBERNETES_POD_TEMPLATE=str(tmp_path / "nowhere.yaml"))


def test_a_bad_kubeconfig_is_refused_at_start_up(build, tmp_path):
    path = tmp_path / "broken-kubeconfig"
    path.write_text("apiVersion: v1\nkind: Config\nclusters: []\n")
    with pytest.raises(ValueError, match="broken-kubeconfig"):
        build(KUBERNETES_KUBECONFIG=str(path))


# --- terminate, kill, stop: grace periods --------------------------------------------------------------
@pytest.mark.parametrize("verb, grace", [("terminate", 12), ("kill", 0), ("stop", 3)])
def test_each_order_deletes_the_pod_with_its_grace_period(fake, build, deployment_name, verb, grace):
    backend = build(BOT_STOP_TIMEOUT_SECONDS=12)
    name = backend.start(make_spec(deployment_name))
    backend.stop(name, timeout=3) if verb == "stop" else getattr(backend, verb)(name)
    (delete,) = _deletes(fake)
    assert delete.body["gracePeriodSeconds"] == grace
    assert delete.body["preconditions"] == {"uid": _pod(fake, name)["metadata"]["uid"]}


def test_a_bot_within_its_grace_period_is_stopping(fake, backend, deployment_name):
    name = backend.start(make_spec(deployment_name))
    fake.ignore_sigterm(name, NS)
    backend.terminate(name)
    info = backend.inspect(name)
    assert (info.status, info.raw_status) == (NormalizedStatus.STOPPING, "Running/Terminating")


def test_kill_during_the_grace_period_ends_the_bot_with_137(fake, backend, deployment_name):
    name = backend.start(make_spec(deployment_name))
    fake.ignore_sigterm(name, NS)
    backend.terminate(name)
    backend.kill(name)
    info = backend.inspect(name)
    assert (info.status, info.exit_code) == (NormalizedStatus.EXITED, 137)


def test_a_stopped_bot_keeps_its_exit_code_until_removed(fake, backend, deployment_name):
    name = backend.start(make_spec(deployment_name))
    fake.finish(name, NS, 4)
    backend.terminate(name)
    assert (backend.inspect(name).status, backend.inspect(name).exit_code) == (NormalizedStatus.EXITED, 4)
    backend.remove(name)
    assert backend.inspect(name) is None


def test_a_deleted_pod_whose_phase_stayed_running_is_exited_once_its_container_ended(fake, backend, deployment_name):
    fake.terminal_phase_on_delete = False
    name = backend.start(make_spec(deployment_name))
    backend.terminate(name)
    info = backend.inspect(name)
    assert (info.status, info.raw_status, info.exit_code) == (NormalizedStatus.EXITED, "Running/Completed", 0)


def test_remove_takes_off_only_our_finalizer(fake, backend, deployment_name):
    name = backend.start(make_spec(deployment_name))
    backend.core.patch_namespaced_pod(name, NS, [{"op": "add", "path": "/metadata/finalizers/0",
                                                  "value": "example.com/audit"}])
    fake.finish(name, NS, 0)
    backend.remove(name)
    assert _pod(fake, name)["metadata"]["finalizers"] == ["example.com/audit"]


# --- not ours ----------------------------------------------------------------------------------------
def _foreign_pod(fake, backend, name: str, labels: dict) -> None:
    backend.core.create_namespaced_pod(NS, {"metadata": {"name": name, "labels": labels},
                                            "spec": {"containers": [{"name": "web", "image": "nginx"}]}})
    fake.calls.clear()


@pytest.mark.parametrize("verb", ["terminate", "kill", "stop", "remove"])
@pytest.mark.parametrize("labels", [{}, {"botmanager.managed": "true", "botmanager.deployment": "someone-else"}])
def test_a_pod_that_is_not_ours_is_refused_and_untouched(fake, backend, verb, labels):
    _foreign_pod(fake, backend, "web-1", labels)
    with pytest.raises(NotOurBotError, match="Refusing"):
        backend.stop("web-1", timeout=1) if verb == "stop" else getattr(backend, verb)("web-1")
    assert [c.verb for c in fake.calls] == ["get"]
    assert backend.inspect("web-1") is None


def test_a_pod_that_is_not_ours_is_not_listed(fake, backend, deployment_name):
    _foreign_pod(fake, backend, "web-1", {"app": "web"})
    assert backend.list() == []


# --- list: one selected call, pagination -----------------------------------------------------------------
def _list_calls(fake) -> list:
    return [c for c in fake.calls if (c.resource, c.verb) == ("pods", "list")]


def test_list_selects_our_bots_by_label(fake, backend, deployment_name):
    backend.start(make_spec(deployment_name))
    backend.list()
    (call,) = _list_calls(fake)
    assert call.query["labelSelector"] == [f"botmanager.managed=true,botmanager.deployment={deployment_name}"]


def test_list_pages_through_every_bot(fake, backend, deployment_name, monkeypatch):
    monkeypatch.setattr(k8s, "LIST_PAGE_SIZE", 2)
    started = {backend.start(make_spec(deployment_name)) for _ in range(5)}
    assert {b.container_id for b in backend.list()} == started
    calls = _list_calls(fake)
    assert [c.query.get("limit") for c in calls] == [["2"]] * 3
    assert ["continue" in c.query for c in calls] == [False, True, True]


def test_list_starts_over_once_when_its_continue_token_expired(fake, backend, deployment_name, monkeypatch):
    monkeypatch.setattr(k8s, "LIST_PAGE_SIZE", 2)
    started = {backend.start(make_spec(deployment_name)) for _ in range(3)}
    fake.expire_continue_tokens(1)
    assert {b.container_id for b in backend.list()} == started
    assert ["continue" in c.query for c in _list_calls(fake)] == [False, True, False, True]


def test_list_raises_when_its_continue_token_expires_twice(fake, backend, deployment_name, monkeypatch):
    monkeypatch.setattr(k8s, "LIST_PAGE_SIZE", 2)
    for _ in range(3):
        backend.start(make_spec(deployment_name))
    fake.expire_continue_tokens(2)
    with pytest.raises(OrchestratorError, match="410 Expired.*too old"):
        backend.list()


# --- the status table -------------------------------------------------------------------------------------
def _drive(fake, name, how):
    if how:
        getattr(fake, how[0])(name, NS, *how[1:])


@pytest.mark.parametrize("how, status, raw, exit_code", [
    (("unschedulable",), NormalizedStatus.REQUESTED, "Pending/Unschedulable: 0/3 nodes are available: 3 Insufficient memory.", None),
    (("image_pull_error",), NormalizedStatus.STARTING, "Pending/ImagePullBackOff", None),
    (None, NormalizedStatus.UP, "Running", None),
    (("finish", 3), NormalizedStatus.EXITED, "Failed/Error", 3),
    (("finish", 0), NormalizedStatus.EXITED, "Succeeded/Completed", 0),
    (("oom_kill",), NormalizedStatus.FAILED, "Failed/OOMKilled", 137),
    (("evict",), NormalizedStatus.FAILED, "Failed/Evicted: The node was low on resource: memory. "
                                          "Threshold quantity: 100Mi, available: 90Mi.", 137),
    (("exceed_deadline",), NormalizedStatus.FAILED,
     "Failed/DeadlineExceeded: Pod was active on the node longer than the specified deadline", 137),
    (("lose_node",), NormalizedStatus.FAILED, "Unknown/NodeLost: Node node-1 which was running pod is unresponsive", None),
    (("lose_node_unreachable",), NormalizedStatus.FAILED, "Running/NodeLost: Taint manager: deleting due to NoExecute taint", None),
    (("drain",), NormalizedStatus.FAILED, "Succeeded/EvictionByEvictionAPI: Eviction API: evicting", 0),
])
def test_status_table(fake, backend, deployment_name, how, status, raw, exit_code):
    name = backend.start(make_spec(deployment_name))
    _drive(fake, name, how)
    info = find(backend.list(), name)
    assert (info.status, info.raw_status, info.exit_code) == (status, raw, exit_code)
    assert backend.inspect(name).status is status


def test_a_pod_deleted_before_it_was_scheduled_is_failed(fake, backend, deployment_name):
    # Kept by our finalizer, and no kubelet will ever report on it.
    name = backend.start(make_spec(deployment_name))
    fake.unschedulable(name, NS)
    backend.terminate(name)
    info = backend.inspect(name)
    assert (info.status, info.raw_status) == (NormalizedStatus.FAILED, "Pending/DeletedBeforeScheduled")
    backend.remove(name)
    assert backend.inspect(name) is None


def test_a_pod_of_an_unreachable_node_is_stopping_until_its_grace_period_ends(fake, backend, deployment_name):
    name = backend.start(make_spec(deployment_name))
    fake.lose_node_unreachable(name, NS, grace=30)
    assert backend.inspect(name).status is NormalizedStatus.STOPPING


def test_a_pod_waiting_for_its_secret_is_starting(fake, backend, deployment_name):
    spec = make_spec(deployment_name)
    backend.core.create_namespaced_pod(NS, backend.pod_manifest(spec))  # and no secret
    info = backend.inspect(spec.name)
    assert (info.status, info.raw_status) == (NormalizedStatus.STARTING, "Pending/CreateContainerConfigError")


@pytest.mark.parametrize("reason", ["ErrImagePull", "ImagePullBackOff", "InvalidImageName", "CreateContainerConfigError"])
def test_a_pod_stuck_past_the_image_pull_bound_is_failed_with_the_reason(fake, build, deployment_name, reason):
    backend = build(KUBERNETES_IMAGE_PULL_TIMEOUT_SECONDS=60)
    name = backend.start(make_spec(deployment_name))
    fake.image_pull_error(name, NS, reason, 'rpc error: "bot:missing" not found')
    fake.age(name, NS, 61)
    info = backend.inspect(name)
    assert (info.status, info.raw_status) == (NormalizedStatus.FAILED, f'Pending/{reason}: rpc error: "bot:missing" not found')


def test_a_pod_pulling_within_the_bound_is_starting(fake, build, deployment_name):
    backend = build(KUBERNETES_IMAGE_PULL_TIMEOUT_SECONDS=60)
    name = backend.start(make_spec(deployment_name))
    fake.image_pull_error(name, NS, "ImagePullBackOff")
    fake.age(name, NS, 50)
    assert backend.inspect(name).status is NormalizedStatus.STARTING


# --- errors ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("code, reason", [(429, "TooManyRequests"), (500, "InternalError"), (503, "ServiceUnavailable")])
@pytest.mark.parametrize("call", ["list", "inspect", "start", "terminate", "instance_id"])
def test_api_errors_are_orchestrator_errors_with_the_servers_message(fake, backend, deployment_name, call, code, reason):
    fake.fail_next(code, reason, "the server is busy, try again")
    args = {"list": (), "instance_id": (), "start": (make_spec(deployment_name),)}.get(call, ("botmanager-bot-1-aaaaaaaa",))
    with pytest.raises(OrchestratorError, match=f"HTTP {code} {reason}: the server is busy, try again"):
        getattr(backend, call)(*args)


def test_a_forbidden_call_names_the_missing_grant(fake, backend):
    fake.fail_next(403, "Forbidden", 'pods is forbidden: User "system:serviceaccount:botmanager:botmanager" '
                                     'cannot list resource "pods" in API group "" in the namespace "botmanager-bots"')
    with pytest.raises(OrchestratorError, match="cannot list resource.*does the service account's Role grant it"):
        backend.list()


def test_a_missing_namespace_is_an_orchestrator_error_naming_it(fake, build, deployment_name):
    with pytest.raises(OrchestratorError, match='namespaces "nowhere" not found'):
        build(KUBERNETES_NAMESPACE="nowhere").start(make_spec(deployment_name))


def test_wrong_credentials_are_an_orchestrator_error(fake, build, tmp_path):
    path = tmp_path / "stale-kubeconfig"
    path.write_text(fake.kubeconfig().replace(fake.token, "expired-token"))
    with pytest.raises(OrchestratorError, match="HTTP 401.*credentials"):
        build(KUBERNETES_KUBECONFIG=str(path)).list()


def test_a_slow_api_server_is_an_orchestrator_error_after_the_query_timeout(fake, build):
    backend = build(ORCHESTRATOR_QUERY_TIMEOUT_SECONDS=0.3)
    fake.delay = 1.0
    started = time.monotonic()
    with pytest.raises(OrchestratorError, match="(?i)timed out"):
        backend.list()
    assert time.monotonic() - started < 0.9


# --- instance id ---------------------------------------------------------------------------------------
def test_the_instance_id_names_the_cluster_by_kube_systems_uid_and_the_namespace(fake, backend):
    uid = fake.namespaces["kube-system"]["metadata"]["uid"]
    assert backend.instance_id() == f"kubernetes:{uid}/{NS}"


def test_a_configured_cluster_id_spares_the_namespace_read(fake, build):
    assert build(KUBERNETES_CLUSTER_ID="prod-eu-1").instance_id() == f"kubernetes:prod-eu-1/{NS}"
    assert fake.calls == []


# --- the declared API calls ---------------------------------------------------------------------------------
def test_every_call_over_a_bots_whole_life_is_declared_in_api_calls(fake, backend, deployment_name, monkeypatch):
    monkeypatch.setattr(k8s, "LIST_PAGE_SIZE", 1)
    backend.instance_id()
    spec = make_spec(deployment_name)
    name = backend.start(spec)
    backend.start(spec)  # retried: the 409 path
    other = backend.start(make_spec(deployment_name))
    fake.expire_continue_tokens(1)
    backend.list()
    backend.inspect(name)
    fake.ignore_sigterm(name, NS)
    backend.terminate(name)
    backend.kill(name)
    backend.stop(other, timeout=1)
    backend.remove(name)
    backend.remove(other)
    backend.remove(name)  # gone
    fake.fail_next(500, method="POST", resource="secrets")
    with pytest.raises(OrchestratorError):
        backend.start(spec)
    assert fake.verbs_seen() <= set(API_CALLS), sorted(fake.verbs_seen() - set(API_CALLS))
    assert set(API_CALLS) <= fake.verbs_seen()  # and nothing is declared that is never called


def test_the_backend_is_registered():
    assert registry.BACKENDS["kubernetes"] == "orchestrators.kubernetes.KubernetesOrchestrator"


# --- the launcher, end to end -------------------------------------------------------------------------
@pytest.fixture
def kubernetes_selected(fake, settings):
    """ORCHESTRATOR=kubernetes, reaching the fake through its kubeconfig."""
    settings.ORCHESTRATOR = "kubernetes"
    settings.KUBERNETES_KUBECONFIG = str(fake.kubeconfig_path)
    settings.KUBERNETES_NAMESPACE = NS
    settings.KUBERNETES_POD_TEMPLATE = ""
    settings.KUBERNETES_CLUSTER_ID = ""
    registry.get_orchestrator.cache_clear()
    yield registry.get_orchestrator()
    registry.get_orchestrator.cache_clear()


@pytest.mark.django_db
def test_a_launched_meeting_runs_as_a_pod_that_the_cluster_ends_after_every_deadline(fake, kubernetes_selected):
    from meetings.launching import bot_credentials
    from meetings.launching.launch import launch
    from meetings.lifecycle import deadlines
    from tests.factories import make_meeting

    meeting = make_meeting()
    name = launch(meeting.id)
    meeting.refresh_from_db()
    try:
        assert meeting.bot_container_id == name
        assert _pod(fake, name)["spec"]["activeDeadlineSeconds"] == math.ceil(deadlines.bot_lifetime_bound())
        config = fake.secret_config(f"{name}-config", NS)
        assert (config["meeting_id"], config["container_name"]) == (meeting.id, name)
    finally:
        bot_credentials.remove_for(meeting.id, [meeting.current_session.session_uid])


@pytest.mark.django_db
def test_a_meeting_whose_pod_cannot_pull_its_image_is_failed_with_the_reason(fake, kubernetes_selected, settings):
    from meetings.launching import bot_credentials
    from meetings.launching.launch import launch
    from meetings.models import Meeting
    from meetings.stopping import reconcile
    from tests.factories import make_meeting
    from tests.stop.conftest import run_bot_stops

    settings.KUBERNETES_IMAGE_PULL_TIMEOUT_SECONDS = 60
    settings.ORPHAN_GRACE_SECONDS = 60
    registry.get_orchestrator.cache_clear()
    meeting = make_meeting(deadline_at=timezone.now() + timedelta(hours=1))
    name = launch(meeting.id)
    session_uid = Meeting.objects.get(pk=meeting.pk).current_session.session_uid
    fake.image_pull_error(name, NS, "ImagePullBackOff", 'Back-off pulling image "registry.example/bot:missing"')
    fake.age(name, NS, 61)
    Meeting.objects.filter(pk=meeting.pk).update(updated_at=timezone.now() - timedelta(seconds=61))
    try:
        reconcile.sweep()
        run_bot_stops()
        ended = Meeting.objects.get(pk=meeting.pk)
        assert ended.status == "failed"
        assert "ImagePullBackOff" in ended.data["last_error"]
        assert 'registry.example/bot:missing' in ended.data["last_error"]
        reconcile.sweep()  # the next sweep removes the ended meeting's failed bot, and its Secret with it
        run_bot_stops()
        assert (NS, name) not in fake.pods
        assert (NS, f"{name}-config") not in fake.secrets
    finally:
        bot_credentials.remove_for(meeting.id, [session_uid])
