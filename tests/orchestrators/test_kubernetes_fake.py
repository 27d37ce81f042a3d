"""The Kubernetes fake keeps the API's rules the backend relies on (so a backend test that passes
against it says something): selectors, pagination, deletion, garbage collection, error bodies.
Through the real client, as the backend talks to it."""
from __future__ import annotations

import json

import kubernetes.client
import kubernetes.config
import pytest
from kubernetes.client.rest import ApiException

from tests.orchestrators.conftest import KUBERNETES_NAMESPACE as NS
from tests.orchestrators.kubernetes_fake import parse_selector, selector_matches


@pytest.fixture
def core(kubernetes_fake):
    configuration = kubernetes.client.Configuration()
    kubernetes.config.load_kube_config(config_file=str(kubernetes_fake.kubeconfig_path),
                                       client_configuration=configuration, persist_config=False)
    return kubernetes.client.CoreV1Api(kubernetes.client.ApiClient(configuration))


def _pod(name, labels=None, **spec):
    return {"metadata": {"name": name, "labels": labels or {}},
            "spec": {"containers": [{"name": "bot", "image": "bot:1"}], "restartPolicy": "Never", **spec}}


@pytest.mark.parametrize("selector, labels, matches", [
    ("a=1,b==2", {"a": "1", "b": "2"}, True),
    ("a=1,b==2", {"a": "1", "b": "3"}, False),
    ("a!=1", {}, True),
    ("a!=1", {"a": "1"}, False),
    ("a in (1, 2)", {"a": "2"}, True),
    ("a in (1, 2)", {}, False),
    ("a notin (1,2)", {"a": "3"}, True),
    ("a notin (1,2)", {"a": "1"}, False),
    ("a", {"a": ""}, True),
    ("!a", {"a": ""}, False),
    ("botmanager.managed=true,botmanager.deployment=x", {"botmanager.managed": "true", "botmanager.deployment": "x"}, True),
])
def test_label_selectors(selector, labels, matches):
    assert selector_matches(parse_selector(selector), labels) is matches


def test_a_malformed_selector_is_a_400(core):
    with pytest.raises(ApiException) as error:
        core.list_namespaced_pod(NS, label_selector="a in (1")
    assert error.value.status == 400


def test_create_twice_is_a_409_already_exists_status(core):
    core.create_namespaced_pod(NS, _pod("p1"))
    with pytest.raises(ApiException) as error:
        core.create_namespaced_pod(NS, _pod("p1"))
    body = json.loads(error.value.body)
    assert (error.value.status, body["kind"], body["reason"], body["code"]) == (409, "Status", "AlreadyExists", 409)


def test_a_label_value_longer_than_63_characters_is_invalid(core):
    with pytest.raises(ApiException) as error:
        core.create_namespaced_pod(NS, _pod("p1", {"k": "x" * 64}))
    assert (error.value.status, json.loads(error.value.body)["reason"]) == (422, "Invalid")


def test_a_list_in_pages_returns_every_pod_once(core):
    for i in range(5):
        core.create_namespaced_pod(NS, _pod(f"p{i}", {"app": "bot"}))
    core.create_namespaced_pod(NS, _pod("other", {"app": "web"}))
    names, token = [], None
    while True:
        page = core.list_namespaced_pod(NS, label_selector="app=bot", limit=2, **({"_continue": token} if token else {}))
        names += [p.metadata.name for p in page.items]
        token = page.metadata._continue
        if not token:
            break
    assert names == [f"p{i}" for i in range(5)]


def test_an_expired_continue_token_is_a_410_expired_status(kubernetes_fake, core):
    for i in range(3):
        core.create_namespaced_pod(NS, _pod(f"p{i}"))
    token = core.list_namespaced_pod(NS, limit=1).metadata._continue
    kubernetes_fake.expire_continue_tokens(1)
    with pytest.raises(ApiException) as error:
        core.list_namespaced_pod(NS, limit=1, _continue=token)
    assert (error.value.status, json.loads(error.value.body)["reason"]) == (410, "Expired")


def test_a_graceful_delete_sets_the_deletion_timestamp_and_a_shorter_one_wins(kubernetes_fake, core):
    core.create_namespaced_pod(NS, _pod("p1"))
    kubernetes_fake.ignore_sigterm("p1", NS)
    core.delete_namespaced_pod("p1", NS, grace_period_seconds=30)
    first = core.read_namespaced_pod("p1", NS).metadata
    core.delete_namespaced_pod("p1", NS, body={"gracePeriodSeconds": 60})
    assert core.read_namespaced_pod("p1", NS).metadata.deletion_timestamp == first.deletion_timestamp
    assert first.deletion_grace_period_seconds == 30


def test_a_delete_with_a_stale_uid_precondition_is_a_409_conflict(core):
    core.create_namespaced_pod(NS, _pod("p1"))
    with pytest.raises(ApiException) as error:
        core.delete_namespaced_pod("p1", NS, body={"preconditions": {"uid": "not-its-uid"}})
    assert (error.value.status, json.loads(error.value.body)["reason"]) == (409, "Conflict")


def test_a_pod_with_a_finalizer_stays_ended_until_the_finalizer_goes(kubernetes_fake, core):
    core.create_namespaced_pod(NS, {**_pod("p1"), "metadata": {"name": "p1", "finalizers": ["example.com/keep"]}})
    core.delete_namespaced_pod("p1", NS, grace_period_seconds=5)
    pod = core.read_namespaced_pod("p1", NS)
    assert (pod.status.phase, pod.status.container_statuses[0].state.terminated.exit_code) == ("Succeeded", 0)
    core.patch_namespaced_pod("p1", NS, [{"op": "remove", "path": "/metadata/finalizers/0"}])
    with pytest.raises(ApiException) as error:
        core.read_namespaced_pod("p1", NS)
    assert error.value.status == 404


def test_a_secret_owned_by_a_pod_goes_with_it_unless_orphaned(core):
    for name in ("p1", "p2"):
        uid = core.create_namespaced_pod(NS, _pod(name)).metadata.uid
        core.create_namespaced_secret(NS, {"metadata": {"name": f"{name}-s", "ownerReferences": [
            {"apiVersion": "v1", "kind": "Pod", "name": name, "uid": uid}]}, "stringData": {"k": "v"}})
    core.delete_namespaced_pod("p1", NS)
    core.delete_namespaced_pod("p2", NS, propagation_policy="Orphan")
    with pytest.raises(ApiException):
        core.read_namespaced_secret("p1-s", NS)
    assert core.read_namespaced_secret("p2-s", NS).metadata.owner_references in (None, [])


def test_requests_without_the_token_are_401(kubernetes_fake, core):
    core.api_client.configuration.api_key = {}
    core.api_client.configuration.api_key_prefix = {}
    with pytest.raises(ApiException) as error:
        core.list_namespaced_pod(NS)
    assert (error.value.status, json.loads(error.value.body)["reason"]) == (401, "Unauthorized")
