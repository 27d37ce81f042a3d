"""deploy/kubernetes/: the manifests render, every object is valid against the Kubernetes schemas
(strictly), the service's ServiceAccount may make exactly the calls the backend makes
(`orchestrators.kubernetes.API_CALLS`), and the service's parts are laid out as the compose file's.
Each check is also shown rejecting a broken manifest. scripts/check-kubernetes.sh (CI) runs the same
checks (scripts/check_kubernetes.py); nothing here reaches a cluster."""
from __future__ import annotations

import copy
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.test_readme import variables_settings_reads

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy" / "kubernetes"
SCRIPT = REPO / "scripts" / "check-kubernetes.sh"

_spec = importlib.util.spec_from_file_location("check_kubernetes", REPO / "scripts" / "check_kubernetes.py")
checker = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(checker)


@pytest.fixture(scope="module")
def api_calls():
    # Fails (not skips) without the backend: the Role is only right if it matches what it calls.
    return checker.load_api_calls()


@pytest.fixture(scope="module")
def rendered():
    return {directory.name: checker.render(directory) for directory in checker.kustomizations(DEPLOY)}


@pytest.fixture
def base(rendered):
    return copy.deepcopy(rendered["base"])


def find(objects, kind, name):
    matches = [obj for obj in objects if obj["kind"] == kind and obj["metadata"]["name"].startswith(name)]
    assert len(matches) == 1, f"{kind} {name}: {len(matches)} found"
    return matches[0]


def run_script(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(SCRIPT), str(root)], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHON": sys.executable})


@pytest.fixture
def deploy_copy(tmp_path):
    root = tmp_path / "kubernetes"
    shutil.copytree(DEPLOY, root)
    return root


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} is not in {path}"
    path.write_text(text.replace(old, new, 1))


# --- the repository's manifests pass -----------------------------------------------------------------

def test_the_check_script_passes_on_the_repository():
    done = run_script(DEPLOY)

    assert done.returncode == 0, done.stdout + done.stderr
    assert "base: ok" in done.stdout and "overlays/example: ok" in done.stdout


def test_base_and_every_overlay_render(rendered):
    assert set(rendered) >= {"base", "example"}
    assert all(rendered.values())


def test_every_object_and_the_bot_pod_template_are_valid_against_the_schemas(rendered):
    for objects in rendered.values():
        assert checker.schema_problems(objects) == []


def test_the_service_account_may_make_exactly_the_backends_calls(rendered, api_calls):
    for objects in rendered.values():
        assert checker.rbac_problems(objects, api_calls) == []


def test_what_the_backend_relies_on_is_wired(rendered):
    for objects in rendered.values():
        assert checker.wiring_problems(objects) == []


# --- the service's parts ---------------------------------------------------------------------------

def test_there_is_one_deployment_per_worker_kind_running_that_kind(base):
    from botmanager.workers import KINDS

    for kind in KINDS:
        pod = find(base, "Deployment", f"botmanager-worker-{kind}")["spec"]["template"]["spec"]
        assert pod["containers"][0]["command"] == ["python", "-m", "botmanager.workers", kind]
    workers = [obj for obj in base if obj["kind"] == "Deployment" and "-worker-" in obj["metadata"]["name"]]
    assert len(workers) == len(KINDS)


def test_beat_is_one_replica_replaced_not_rolled(base):
    beat = find(base, "Deployment", "botmanager-beat")

    assert beat["spec"]["replicas"] == 1
    assert beat["spec"]["strategy"] == {"type": "Recreate"}


def test_web_is_ready_on_readyz_alive_on_healthz_and_kept_up_by_a_disruption_budget(base):
    web = find(base, "Deployment", "botmanager-web")
    container = web["spec"]["template"]["spec"]["containers"][0]
    budget = find(base, "PodDisruptionBudget", "botmanager-web")

    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert budget["spec"]["selector"]["matchLabels"] == web["spec"]["selector"]["matchLabels"]
    assert budget["spec"]["minAvailable"] < web["spec"]["replicas"]


def test_every_configured_variable_is_one_the_settings_read(base):
    config = find(base, "ConfigMap", "botmanager-config")

    unread = set(config["data"]) - variables_settings_reads()

    # KUBERNETES_* are read once orchestrators/kubernetes.py's settings are in botmanager/settings.py.
    assert unread == set(), f"deploy/kubernetes sets variables botmanager/settings.py does not read: {sorted(unread)}"


def pods(objects):
    """(name, pod spec) of every workload and bot pod template."""
    found = [(obj["metadata"]["name"], obj["spec"]["template"]["spec"]) for obj in objects
             if obj["kind"] in checker.WORKLOAD_KINDS]
    return found + [(where, pod["spec"]) for where, pod in checker.pod_templates(objects)]


def test_every_pod_bots_included_meets_the_restricted_pod_security_standard(rendered):
    # What `pod-security.kubernetes.io/enforce=restricted` on both namespaces (README) demands.
    for objects in rendered.values():
        for name, pod in pods(objects):
            assert pod["securityContext"]["runAsNonRoot"] is True, name
            assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, name
            assert not {"hostNetwork", "hostPID", "hostIPC"} & set(pod), name
            assert all(set(volume) - {"name"} <= {"emptyDir", "configMap", "secret", "projected"}
                       for volume in pod.get("volumes", [])), name
            for container in pod.get("initContainers", []) + pod["containers"]:
                assert container["securityContext"]["allowPrivilegeEscalation"] is False, (name, container["name"])
                assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}, (name, container["name"])


def test_every_service_container_has_a_read_only_root_and_resources(base):
    for obj in base:
        if obj["kind"] not in checker.WORKLOAD_KINDS:
            continue
        pod = obj["spec"]["template"]["spec"]
        for container in pod.get("initContainers", []) + pod["containers"]:
            assert container["securityContext"]["readOnlyRootFilesystem"] is True, container["name"]
            assert {"requests", "limits"} <= set(container["resources"]), container["name"]


def test_no_connection_into_a_bot_pod_is_allowed(rendered):
    from orchestrators.base import LABEL_MANAGED

    for objects in rendered.values():
        policy = find(objects, "NetworkPolicy", "botmanager-bots-no-ingress")
        bots_namespace = find(objects, "ConfigMap", "botmanager-config")["data"]["KUBERNETES_NAMESPACE"]

        assert policy["metadata"]["namespace"] == bots_namespace
        assert policy["spec"]["podSelector"] == {"matchLabels": {LABEL_MANAGED: "true"}}
        assert policy["spec"]["policyTypes"] == ["Ingress"] and not policy["spec"].get("ingress")


def test_an_overlay_moves_both_namespaces_and_keeps_them_naming_each_other(rendered):
    objects = rendered["example"]
    config = find(objects, "ConfigMap", "botmanager-config")["data"]
    binding = find(objects, "RoleBinding", "botmanager-bots")

    assert find(objects, "Role", "botmanager-bots")["metadata"]["namespace"] == "meeting-bots"
    assert config["KUBERNETES_NAMESPACE"] == "meeting-bots"
    assert binding["subjects"][0]["namespace"] == "meetings"
    assert config["PUBLIC_BASE_URL"] == "http://botmanager-web.meetings.svc:8000"


# --- each check rejects a broken manifest ------------------------------------------------------------

def test_the_script_rejects_an_unknown_field(deploy_copy):
    edit(deploy_copy / "base" / "service" / "web.yaml", "  replicas: 2", "  replica: 2")

    done = run_script(deploy_copy)

    assert done.returncode == 1
    assert "Deployment botmanager/botmanager-web" in done.stderr and "'replica' was unexpected" in done.stderr


def test_the_script_rejects_a_role_missing_a_verb_the_backend_calls(deploy_copy):
    edit(deploy_copy / "base" / "bots" / "rbac.yaml",
         'resources: ["secrets"]\n    verbs: ["create", "get", "delete"]',
         'resources: ["secrets"]\n    verbs: ["create", "get"]')

    done = run_script(deploy_copy)

    assert done.returncode == 1
    assert "lacks delete on core/secrets in namespace botmanager-bots" in done.stderr


def test_the_script_rejects_a_role_granting_a_verb_the_backend_never_calls(deploy_copy):
    edit(deploy_copy / "base" / "bots" / "rbac.yaml",
         'resources: ["pods"]\n    verbs: ["create", "get", "list", "delete", "patch"]',
         'resources: ["pods"]\n    verbs: ["create", "get", "list", "delete", "patch", "watch"]')

    done = run_script(deploy_copy)

    assert done.returncode == 1
    assert "may watch core/pods in namespace botmanager-bots: the backend makes no such call" in done.stderr


def test_the_script_reports_a_kustomization_that_does_not_render(deploy_copy):
    (deploy_copy / "base" / "service" / "beat.yaml").unlink()

    done = run_script(deploy_copy)

    assert done.returncode == 1
    assert "kubectl kustomize" in done.stderr and "beat.yaml" in done.stderr


def test_a_value_of_the_wrong_type_is_rejected(base):
    find(base, "Deployment", "botmanager-web")["spec"]["replicas"] = "two"

    assert any("spec.replicas" in problem for problem in checker.schema_problems(base))


def test_an_unknown_field_in_the_bot_pod_template_is_rejected(base):
    template = find(base, "ConfigMap", "botmanager-bot-pod-template")
    pod = yaml.safe_load(template["data"]["bot-pod.yaml"])
    pod["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    template["data"]["bot-pod.yaml"] = yaml.safe_dump(pod)

    problems = checker.schema_problems(base)

    assert any("bot-pod.yaml" in problem and "'imagePullPolicyy' was unexpected" in problem for problem in problems)


def test_a_kind_without_a_schema_is_rejected():
    widget = {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}}

    assert checker.schema_problems([widget]) != []


def test_a_resource_the_backend_never_touches_is_rejected(base, api_calls):
    find(base, "Role", "botmanager-bots")["rules"].append(
        {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"]})

    assert checker.rbac_problems(base, api_calls) == [
        "ServiceAccount botmanager/botmanager may get core/configmaps in namespace botmanager-bots: "
        "the backend makes no such call"]


def test_a_wildcard_is_rejected(base, api_calls):
    find(base, "Role", "botmanager-bots")["rules"][0]["verbs"] = ["*"]

    assert any("wildcard" in problem for problem in checker.rbac_problems(base, api_calls))


def test_rights_in_the_services_own_namespace_are_rejected(base, api_calls):
    role = copy.deepcopy(find(base, "Role", "botmanager-bots"))
    binding = copy.deepcopy(find(base, "RoleBinding", "botmanager-bots"))
    role["metadata"]["namespace"] = binding["metadata"]["namespace"] = "botmanager"
    base += [role, binding]

    problems = checker.rbac_problems(base, api_calls)

    assert "ServiceAccount botmanager/botmanager may get core/secrets in namespace botmanager: " \
           "the backend works in botmanager-bots only" in problems


def test_reading_namespaces_other_than_kube_system_is_rejected(base, api_calls):
    del find(base, "ClusterRole", "botmanager-cluster-id")["rules"][0]["resourceNames"]

    assert checker.rbac_problems(base, api_calls) == [
        "ServiceAccount botmanager/botmanager may get namespaces of any name cluster-wide: only kube-system is read"]


def test_without_the_cluster_role_the_cluster_must_be_named_in_the_config(base, api_calls):
    base = [obj for obj in base if obj["kind"] not in ("ClusterRole", "ClusterRoleBinding")]

    assert any("lacks get on namespaces/kube-system" in problem for problem in checker.rbac_problems(base, api_calls))
    find(base, "ConfigMap", "botmanager-config")["data"]["KUBERNETES_CLUSTER_ID"] = "eu-1"
    assert checker.rbac_problems(base, api_calls) == []


def test_a_binding_to_the_account_of_another_namespace_grants_nothing(base, api_calls):
    # What an overlay that moved the service's namespace without components/namespace-references
    # would render: the RoleBinding still names the old namespace's ServiceAccount.
    find(base, "RoleBinding", "botmanager-bots")["subjects"][0]["namespace"] = "elsewhere"

    problems = checker.rbac_problems(base, api_calls)

    assert "ServiceAccount botmanager/botmanager lacks create on core/pods in namespace botmanager-bots, " \
           "which the backend calls" in problems


def test_a_bot_pod_template_giving_bots_an_api_token_is_rejected(base):
    template = find(base, "ConfigMap", "botmanager-bot-pod-template")
    template["data"]["bot-pod.yaml"] = template["data"]["bot-pod.yaml"].replace(
        "automountServiceAccountToken: false", "automountServiceAccountToken: true")

    assert any("bots must get no Kubernetes API token" in problem for problem in checker.wiring_problems(base))


def test_a_bot_template_that_is_not_a_pod_is_rejected(base):
    template = find(base, "ConfigMap", "botmanager-bot-pod-template")
    pod = yaml.safe_load(template["data"]["bot-pod.yaml"])
    template["data"]["bot-pod.yaml"] = yaml.safe_dump(
        {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "bot"}, "template": pod})

    assert any("the backend reads a `kind: Pod` manifest, not 'PodTemplate'" in problem
               for problem in checker.wiring_problems(base))


def test_a_pod_holding_the_token_without_the_template_mounted_is_rejected(base):
    pod = find(base, "Deployment", "botmanager-worker-orchestrator")["spec"]["template"]["spec"]
    pod["containers"][0]["volumeMounts"] = [m for m in pod["containers"][0]["volumeMounts"]
                                            if m["name"] != "bot-pod-template"]

    assert checker.wiring_problems(base) == [
        "Deployment botmanager/botmanager-worker-orchestrator container worker: the bot pod template is not "
        "mounted at /etc/botmanager/bot-pod-template (KUBERNETES_POD_TEMPLATE)"]


def test_a_shipped_secret_is_rejected(base):
    base.append({"apiVersion": "v1", "kind": "Secret", "stringData": {"SECRET_KEY": "x"},
                 "metadata": {"name": "botmanager-secrets", "namespace": "botmanager"}})

    assert checker.wiring_problems(base) == [
        "Secret botmanager/botmanager-secrets is shipped: secrets come from the operator's Secret, not the manifests"]
