"""Kubernetes backend: every bot is one pod (`restartPolicy: Never`) in KUBERNETES_NAMESPACE.

Through the official `kubernetes` client (docs/orchestrators.md, kubernetes, says why not lightkube).
The pod name is the bot name and the container id. What the pod is built from:
- the operator's pod template (KUBERNETES_POD_TEMPLATE, a `kind: Pod` manifest: image, resources,
  node selectors, tolerations, imagePullSecrets, serviceAccountName, securityContext...); the bot's
  container is the one named `bot`, else the first;
- ours on top: name, labels and annotations, `restartPolicy: Never` (a dead bot is reported, not
  silently re-run), `terminationGracePeriodSeconds` = BOT_STOP_TIMEOUT_SECONDS,
  `activeDeadlineSeconds` from the spec's `deadline_seconds` (the cluster ends a bot that outlived
  every deadline of ours even while the whole control plane is down), the finalizer below, and
  BOT_CONFIG as `env.valueFrom.secretKeyRef` of a per-bot Secret `<pod>-config`.

The Secret is created after the pod, owned by it (ownerReference: the garbage collector deletes it
with the pod); the kubelet does not start the container before it exists. BOT_CONFIG (Redis
credentials, the meeting token) is never in the pod spec, which every `pods get` token reads.

Labels: label values are at most 63 characters, and the session digest (64 hex) does not fit. A
label of ours whose value is no valid label value is written as an annotation of the same key;
`BotInfo.labels` is labels and annotations of ours together. The two labels the listing selects on
(`botmanager.managed`, `botmanager.deployment`) are always labels (DEPLOYMENT_NAME is checked).

Exit codes: a deleted pod disappears once its containers stop, and with it the exit code the sweep
needs. Every bot pod carries the finalizer `FINALIZER`: a stopped pod stays, terminated, with its
container's exit code, until `remove()` takes the finalizer off (as the Job controller's own
tracking finalizer does). A pod whose containers ended but that carries a deletion timestamp is
therefore Exited, not Stopping.

Calls (all in `API_CALLS`; deploy/kubernetes/'s Role grants exactly these): start = create pod, create
secret (on 409: get pod / get secret, delete a stale secret; a secret that cannot be created:
delete and patch the pod, which never ran, away); terminate, kill, stop = get pod then
delete pod with `gracePeriodSeconds`; remove = get pod, delete pod, patch pod (a JSON patch removing
our finalizer), delete secret; list = list pods by label selector, paginated; inspect = get pod;
instance_id = get namespace kube-system (unless KUBERNETES_CLUSTER_ID is set). No call retries or
sleeps: every failure is an OrchestratorError, and callers retry by countdowns and sweeps.
Decision record: docs/decisions/0019-a-bot-pod-kept-by-a-finalizer-its-config-in-a-secret-it-owns.md.
"""
from __future__ import annotations

import base64
import copy
import json
import logging
import math
import os
import re
from datetime import datetime, timezone
from pathlib import Path

import kubernetes.client
import kubernetes.config
import urllib3
import yaml
from kubernetes.client.rest import ApiException

from orchestrators.base import (LABEL_DEPLOYMENT, LABEL_MANAGED, LABEL_PREFIX, LABEL_SESSION_UID, BotInfo,
                                BotSpec, NormalizedStatus, NotOurBotError, OrchestratorError, is_ours)

log = logging.getLogger(__name__)

# Every (API group, resource, verb) this backend can call; tests/orchestrators/test_kubernetes.py
# checks every request over a bot's whole life is in here, and deploy/kubernetes/'s Role grants it.
API_CALLS: tuple[tuple[str, str, str], ...] = (
    ("", "pods", "create"),
    ("", "pods", "get"),
    ("", "pods", "list"),
    ("", "pods", "delete"),
    ("", "pods", "patch"),
    ("", "secrets", "create"),
    ("", "secrets", "get"),
    ("", "secrets", "delete"),
    ("", "namespaces", "get"),  # kube-system's UID: cluster-scoped; not needed with KUBERNETES_CLUSTER_ID
)

FINALIZER = "botmanager.io/exit-status"
CONFIG_KEY = "BOT_CONFIG"
BOT_CONTAINER = "bot"
LIST_PAGE_SIZE = 250
# A container waiting for one of these does not get better by itself (ImagePullBackOff retries,
# but a missing image or a config error needs an operator): past the bound it is Failed.
STUCK_WAITING = frozenset({"ErrImagePull", "ImagePullBackOff", "InvalidImageName",
                           "CreateContainerConfigError", "CreateContainerError"})
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")

# A connection or a timeout (urllib3), or an answer the client could not turn into its models
# (pydantic's ValidationError is a ValueError).
_TRANSPORT_ERRORS = (urllib3.exceptions.HTTPError, OSError, ValueError)

DEFAULT_POD_TEMPLATE = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {},
    "spec": {"containers": [{"name": BOT_CONTAINER}]},
}


def is_label_value(value: str) -> bool:
    return len(value) <= 63 and bool(_LABEL_VALUE.match(value))


# --- the status table (docs/orchestrators.md, kubernetes) -----------------------------------------
def _bot_container_status(pod) -> object | None:
    statuses = (pod.status.container_statuses if pod.status else None) or []
    return next((s for s in statuses if s.name == BOT_CONTAINER), statuses[0] if statuses else None)


def _scheduled(pod) -> bool:
    if pod.spec and pod.spec.node_name:
        return True
    conditions = (pod.status.conditions if pod.status else None) or []
    return any(c.type == "PodScheduled" and c.status == "True" for c in conditions)


def pod_status(pod, now: datetime, stuck_after: float) -> tuple[NormalizedStatus, str, int | None]:
    """(status, raw status, exit code) of a bot pod; `stuck_after`: the image-pull bound."""
    status = pod.status
    phase = (status.phase if status else None) or "Pending"
    reason = status.reason if status else None
    message = (status.message if status else None) or ""
    container = _bot_container_status(pod)
    state = container.state if container else None
    terminated = state.terminated if state else None
    exit_code = terminated.exit_code if terminated else None

    def said(head: str, why: str | None, text: str = "") -> str:
        return f"{head}/{why}: {text}" if text else (f"{head}/{why}" if why else head)

    conditions = (status.conditions if status else None) or []
    # Set by the cluster (eviction API, preemption, the taint manager, pod GC, node pressure) on
    # a pod it ends; never by our own delete.
    disruption = next((c for c in conditions if c.type == "DisruptionTarget" and c.status == "True"), None)
    deleting = pod.metadata.deletion_timestamp
    # A deleted pod kept by our finalizer: a kubelet may leave its phase as it was, and then only
    # the container says that the bot ended.
    if phase in ("Succeeded", "Failed") or (deleting is not None and exit_code is not None):
        # The pod's own reason (Evicted, DeadlineExceeded, NodeLost...): the cluster ended it.
        if reason:
            return NormalizedStatus.FAILED, said(phase, reason, message), exit_code
        if disruption is not None:
            return NormalizedStatus.FAILED, said(phase, disruption.reason, disruption.message or ""), exit_code
        if terminated is not None and terminated.reason == "OOMKilled":
            return NormalizedStatus.FAILED, said(phase, "OOMKilled"), exit_code
        if exit_code is not None:
            return NormalizedStatus.EXITED, said(phase, terminated.reason or f"exit {exit_code}"), exit_code
        return NormalizedStatus.FAILED, said(phase, "no exit code"), None
    if phase == "Unknown" or reason == "NodeLost":
        return NormalizedStatus.FAILED, said(phase, reason or "NodeLost", message), None
    if deleting is not None:
        if not _scheduled(pod):
            # No node, so no kubelet will ever report on it: it never ran, and never will.
            return NormalizedStatus.FAILED, said(phase, "DeletedBeforeScheduled"), None
        if (disruption is not None and disruption.reason == "DeletionByTaintManager"
                and _rfc3339(deleting) < now):
            # Deleted because its node is unreachable or not ready, and past its grace period with
            # no kubelet confirming the end: its node is lost.
            return NormalizedStatus.FAILED, said(phase, "NodeLost", disruption.message or ""), None
        return NormalizedStatus.STOPPING, said(phase, "Terminating"), None
    if phase == "Running":
        return NormalizedStatus.UP, "Running", None
    if not _scheduled(pod):
        why = next((c for c in conditions if c.type == "PodScheduled" and c.reason), None)
        return NormalizedStatus.REQUESTED, said("Pending", why.reason if why else "NotScheduled",
                                                (why.message or "") if why else ""), None
    waiting = state.waiting if state else None
    if waiting is not None and waiting.reason in STUCK_WAITING:
        created = pod.metadata.creation_timestamp
        if created is not None and (now - created).total_seconds() > stuck_after:
            return NormalizedStatus.FAILED, said("Pending", waiting.reason, waiting.message or ""), None
    return NormalizedStatus.STARTING, said("Pending", (waiting.reason if waiting else None) or "ContainerCreating"), None


# --- the pod template ---------------------------------------------------------------------------
def load_pod_template(path: str | os.PathLike | None) -> dict:
    """The operator's pod manifest, checked now: a bad file is an error at start-up, not a 500 later."""
    if not path:
        return copy.deepcopy(DEFAULT_POD_TEMPLATE)
    where = f"KUBERNETES_POD_TEMPLATE {str(path)!r}"
    try:
        template = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise ValueError(f"{where} cannot be read: {exc}") from exc
    except yaml.YAMLError as exc:
        raise ValueError(f"{where} is not YAML: {exc}") from exc
    if not isinstance(template, dict):
        raise ValueError(f"{where} must be one Pod manifest (a mapping), not {type(template).__name__}.")
    if template.get("kind", "Pod") != "Pod" or template.get("apiVersion", "v1") != "v1":
        raise ValueError(f"{where} must be a `apiVersion: v1`, `kind: Pod` manifest "
                         f"(got {template.get('apiVersion')!r}, {template.get('kind')!r}).")
    metadata = template.setdefault("metadata", {}) or {}
    if not isinstance(metadata, dict):
        raise ValueError(f"{where}: metadata must be a mapping.")
    template["metadata"] = metadata
    for key in ("labels", "annotations"):
        values = metadata.get(key) or {}
        if not isinstance(values, dict) or not all(isinstance(v, str) for v in values.values()):
            raise ValueError(f"{where}: metadata.{key} must map names to strings.")
    spec = template.get("spec")
    if not isinstance(spec, dict):
        raise ValueError(f"{where} has no `spec` mapping.")
    containers = spec.get("containers")
    if not isinstance(containers, list) or not containers or not all(isinstance(c, dict) for c in containers):
        raise ValueError(f"{where}: spec.containers must be a non-empty list of containers.")
    if spec.get("restartPolicy", "Never") != "Never":
        raise ValueError(f"{where}: restartPolicy must be Never (or left out): a bot that ended is "
                         f"reported, never re-run in the same pod.")
    bot = _bot_container(template)
    if not bot.get("name"):
        raise ValueError(f"{where}: the bot's container needs a name.")
    env = bot.get("env") or []
    if not isinstance(env, list) or any(isinstance(e, dict) and e.get("name") == CONFIG_KEY for e in env):
        raise ValueError(f"{where}: the bot container's env must be a list without {CONFIG_KEY} "
                         f"(botmanager fills it from the bot's Secret).")
    return template


def _bot_container(template: dict) -> dict:
    containers = template["spec"]["containers"]
    return next((c for c in containers if c.get("name") == BOT_CONTAINER), containers[0])


def _rfc3339(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


class _Expired(Exception):
    def __init__(self, exc: ApiException):
        super().__init__(str(exc))
        self.exc = exc


class KubernetesOrchestrator:
    name = "kubernetes"

    def __init__(self, *, api_client, namespace: str, deployment: str, image: str, template: dict,
                 stop_timeout: float, timeout: float, query_timeout: float, pull_timeout: float,
                 cluster_id: str = ""):
        if not _DNS_LABEL.match(namespace or ""):
            raise ValueError(f"KUBERNETES_NAMESPACE {namespace!r} is not a namespace name (a DNS label).")
        if not deployment or not is_label_value(deployment):
            raise ValueError(f"DEPLOYMENT_NAME {deployment!r} must be a Kubernetes label value "
                             f"(at most 63 letters, digits, '-', '_', '.'): the listing selects on it.")
        self.core = kubernetes.client.CoreV1Api(api_client)
        self.host = api_client.configuration.host
        self.namespace = namespace
        self.deployment = deployment
        self.image = image
        self.template = template
        self.stop_timeout = stop_timeout
        self.timeout = timeout
        self.query_timeout = query_timeout or timeout
        self.pull_timeout = pull_timeout
        self._cluster_id = cluster_id or None

    @classmethod
    def from_settings(cls, settings) -> "KubernetesOrchestrator":
        return cls(
            api_client=api_client_from(settings.KUBERNETES_KUBECONFIG, settings.KUBERNETES_CONTEXT,
                                       in_cluster=settings.KUBERNETES_IN_CLUSTER),
            namespace=settings.KUBERNETES_NAMESPACE,
            deployment=settings.DEPLOYMENT_NAME,
            image=settings.BOT_IMAGE,
            template=load_pod_template(settings.KUBERNETES_POD_TEMPLATE),
            stop_timeout=settings.BOT_STOP_TIMEOUT_SECONDS,
            timeout=settings.ORCHESTRATOR_TIMEOUT_SECONDS,
            query_timeout=settings.ORCHESTRATOR_QUERY_TIMEOUT_SECONDS,
            pull_timeout=settings.KUBERNETES_IMAGE_PULL_TIMEOUT_SECONDS,
            cluster_id=settings.KUBERNETES_CLUSTER_ID,
        )

    # --- talking to the API server ---------------------------------------------------------------
    def _where(self) -> str:
        return f"Kubernetes at {self.host} (namespace {self.namespace})"

    def _failed(self, what: str, exc: Exception) -> OrchestratorError:
        """An actionable error: the API server's own `Status` message when it sent one."""
        if isinstance(exc, ApiException):
            detail = exc.reason or ""
            try:
                body = json.loads(exc.body or "")
            except (TypeError, ValueError):
                body = None
            if isinstance(body, dict) and body.get("message"):
                detail = f"{body.get('reason') or exc.reason}: {body['message']}"
            hint = {401: " (are the credentials of KUBERNETES_KUBECONFIG still valid?)",
                    403: " (does the service account's Role grant it? see deploy/kubernetes/README.md)",
                    429: " (the API server is throttling; it is retried later)"}.get(exc.status, "")
            return OrchestratorError(f"{self._where()} could not {what}: HTTP {exc.status} {detail}{hint}")
        return OrchestratorError(f"{self._where()} could not {what}: {type(exc).__name__}: {exc}")

    def _call(self, what: str, method, *args, timeout: float, tolerate: tuple[int, ...] = (), **kwargs):
        """One API call; None when the server answers a status in `tolerate` (404: gone counts as
        done). Never retried here."""
        try:
            return method(*args, _request_timeout=timeout, **kwargs)
        except ApiException as exc:
            if exc.status in tolerate:
                return None
            raise self._failed(what, exc) from exc
        except _TRANSPORT_ERRORS as exc:
            raise self._failed(what, exc) from exc

    def instance_id(self) -> str:
        if self._cluster_id is None:
            # Immutable: read once. Reading it needs `get` on namespaces (cluster-scoped);
            # KUBERNETES_CLUSTER_ID spares the grant.
            namespace = self._call("read the kube-system namespace (its UID names the cluster; or set "
                                   "KUBERNETES_CLUSTER_ID)", self.core.read_namespace, "kube-system",
                                   timeout=self.query_timeout)
            if not namespace.metadata or not namespace.metadata.uid:
                raise OrchestratorError(f"{self._where()} answered kube-system without a UID")
            self._cluster_id = namespace.metadata.uid
        return f"kubernetes:{self._cluster_id}/{self.namespace}"

    # --- identity ---------------------------------------------------------------------------------
    def _split_labels(self, spec: BotSpec) -> tuple[dict[str, str], dict[str, str]]:
        ours = {str(k): str(v) for k, v in spec.labels.items()}
        ours[LABEL_MANAGED] = "true"
        ours[LABEL_DEPLOYMENT] = self.deployment
        labels = {k: v for k, v in ours.items() if is_label_value(v)}
        annotations = {k: v for k, v in ours.items() if k not in labels}
        return labels, annotations

    @staticmethod
    def _labels_of(pod) -> dict[str, str]:
        """Our labels and annotations together: what the bot was started with."""
        meta = pod.metadata
        merged = {k: v for k, v in (meta.annotations or {}).items() if k.startswith(LABEL_PREFIX)}
        merged.update({k: v for k, v in (meta.labels or {}).items() if k.startswith(LABEL_PREFIX)})
        return merged

    def _is_ours(self, pod) -> bool:
        return is_ours(pod.metadata.labels, self.deployment)

    def _info(self, pod, now: datetime) -> BotInfo:
        status, raw, exit_code = pod_status(pod, now, self.pull_timeout)
        return BotInfo(container_id=pod.metadata.name, name=pod.metadata.name, status=status, raw_status=raw,
                       labels=self._labels_of(pod), created_at=pod.metadata.creation_timestamp,
                       exit_code=exit_code)

    @staticmethod
    def _secret_name(pod_name: str) -> str:
        return f"{pod_name}-config"

    # --- start ------------------------------------------------------------------------------------
    def pod_manifest(self, spec: BotSpec) -> dict:
        pod = copy.deepcopy(self.template)
        labels, annotations = self._split_labels(spec)
        meta = pod["metadata"]
        meta.pop("generateName", None)
        meta["name"] = spec.name
        meta["namespace"] = self.namespace
        meta["labels"] = {**(meta.get("labels") or {}), **labels}
        meta["annotations"] = {**(meta.get("annotations") or {}), **annotations}
        meta["finalizers"] = [*(f for f in meta.get("finalizers") or [] if f != FINALIZER), FINALIZER]
        body = pod["spec"]
        body["restartPolicy"] = "Never"
        body["terminationGracePeriodSeconds"] = max(0, math.ceil(self.stop_timeout))
        if spec.deadline_seconds:
            body["activeDeadlineSeconds"] = max(1, math.ceil(spec.deadline_seconds))
        container = _bot_container(pod)
        container.setdefault("image", self.image)
        container["env"] = [*(container.get("env") or []), {
            "name": CONFIG_KEY,
            "valueFrom": {"secretKeyRef": {"name": self._secret_name(spec.name), "key": CONFIG_KEY}},
        }]
        return pod

    def start(self, spec: BotSpec) -> str:
        if not _DNS_LABEL.match(spec.name) or len(spec.name) > 63 - len("-config"):
            raise OrchestratorError(f"bot name {spec.name!r} cannot name a pod and its secret")
        try:
            pod = self.core.create_namespaced_pod(self.namespace, self.pod_manifest(spec), _request_timeout=self.timeout)
        except ApiException as exc:
            if exc.status != 409:
                raise self._failed(f"create pod {spec.name}", exc) from exc
            pod = self._adopt_same_session(spec, exc)
        except _TRANSPORT_ERRORS as exc:
            raise self._failed(f"create pod {spec.name}", exc) from exc
        try:
            self._create_secret(spec, pod)
        except OrchestratorError:
            # The launch fails; a pod left waiting for its config would only wait out the pull bound.
            self._discard(pod)
            raise
        return pod.metadata.name

    def _discard(self, pod) -> None:
        """Best effort: delete a pod that never started and release it from our finalizer."""
        name = pod.metadata.name
        try:
            self._delete_pod(pod, 0, "discard")
            self._release(pod)
        except OrchestratorError as exc:
            log.warning("kubernetes: could not discard pod %s, whose config secret could not be created "
                        "(the sweep removes it): %s", name, exc)

    def _adopt_same_session(self, spec: BotSpec, conflict: ApiException):
        """A 409 on create: a retried start of this very bot finds its own pod; anything else by
        that name is a real conflict."""
        pod = self._call(f"read pod {spec.name}", self.core.read_namespaced_pod, spec.name, self.namespace,
                         timeout=self.query_timeout, tolerate=(404,))
        if pod is None:  # gone between the two calls: let the caller's retry create it
            raise self._failed(f"create pod {spec.name} (it existed, then vanished)", conflict)
        wanted = spec.labels.get(LABEL_SESSION_UID)
        if not self._is_ours(pod) or self._labels_of(pod).get(LABEL_SESSION_UID) != wanted:
            raise OrchestratorError(f"{self._where()} already has a pod {spec.name} that is not this "
                                    f"session's bot; refusing to touch it.")
        return pod

    def _create_secret(self, spec: BotSpec, pod) -> None:
        name = self._secret_name(spec.name)
        body = {
            "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {
                "name": name, "namespace": self.namespace,
                "labels": {LABEL_MANAGED: "true", LABEL_DEPLOYMENT: self.deployment},
                # The garbage collector deletes it with its pod, even if we never remove the bot.
                "ownerReferences": [{"apiVersion": "v1", "kind": "Pod", "name": pod.metadata.name,
                                     "uid": pod.metadata.uid}],
            },
            "data": {CONFIG_KEY: base64.b64encode(json.dumps(spec.config).encode()).decode()},
            # Never changed (a stale one is replaced): kubelets need not watch it.
            "immutable": True,
        }
        for attempt in (1, 2):
            try:
                self.core.create_namespaced_secret(self.namespace, body, _request_timeout=self.timeout)
                return
            except ApiException as exc:
                if exc.status != 409 or attempt == 2:
                    raise self._failed(f"create the config secret {name} of pod {spec.name}", exc) from exc
            except _TRANSPORT_ERRORS as exc:
                raise self._failed(f"create the config secret {name} of pod {spec.name}", exc) from exc
            existing = self._call(f"read secret {name}", self.core.read_namespaced_secret, name, self.namespace,
                                  timeout=self.query_timeout, tolerate=(404,))
            owners = (existing.metadata.owner_references or []) if existing is not None else []
            if any(o.uid == pod.metadata.uid for o in owners):
                return  # a retried start: this pod's own secret
            if existing is not None and not is_ours(existing.metadata.labels, self.deployment):
                raise OrchestratorError(f"{self._where()} has a secret {name} that is not ours; "
                                        f"refusing to replace it.")
            # Ours, left by an older pod of this name (its GC has not run yet): replace it.
            self._call(f"delete the stale secret {name}", self.core.delete_namespaced_secret, name, self.namespace,
                       timeout=self.timeout, tolerate=(404,))

    # --- stop, kill, remove --------------------------------------------------------------------
    def _own(self, container_id: str, verb: str):
        """The pod when it is a bot of this deployment, None when there is no such pod;
        NotOurBotError for anything else."""
        if not _DNS_LABEL.match(container_id or "") or len(container_id) > 253:
            raise NotOurBotError(f"Refusing to {verb} {container_id!r}: not a pod name.")
        pod = self._call(f"read pod {container_id}", self.core.read_namespaced_pod, container_id, self.namespace,
                         timeout=self.query_timeout, tolerate=(404,))
        if pod is not None and not self._is_ours(pod):
            raise NotOurBotError(f"Refusing to {verb} {container_id!r}: it is not a bot of deployment "
                                 f"{self.deployment!r}.")
        return pod

    def _delete_pod(self, pod, grace: float, verb: str) -> None:
        name = pod.metadata.name
        # The uid precondition: never delete a pod that replaced the one we judged ours.
        options = {"gracePeriodSeconds": max(0, math.ceil(grace)), "preconditions": {"uid": pod.metadata.uid}}
        # 404: gone; 409: replaced since we read it, not ours to touch.
        self._call(f"{verb} pod {name}", self.core.delete_namespaced_pod, name, self.namespace, body=options,
                   timeout=self.query_timeout, tolerate=(404, 409))

    def terminate(self, container_id: str) -> None:
        # The kubelet sends SIGTERM and, after the grace period, SIGKILL.
        pod = self._own(container_id, "terminate")
        if pod is not None:
            self._delete_pod(pod, self.stop_timeout, "terminate")

    def kill(self, container_id: str) -> None:
        pod = self._own(container_id, "kill")
        if pod is not None:
            self._delete_pod(pod, 0, "kill")

    def stop(self, container_id: str, timeout: float) -> None:
        # The grace period is the kubelet's SIGTERM-to-SIGKILL wait: terminate, wait, kill in one
        # call, which returns at once (the finalizer keeps the ended pod to read).
        pod = self._own(container_id, "stop")
        if pod is not None:
            self._delete_pod(pod, timeout, "stop")

    def remove(self, container_id: str) -> None:
        pod = self._own(container_id, "remove")
        if pod is None:
            self._delete_secret(container_id)
            return
        if pod.metadata.deletion_timestamp is None:
            self._delete_pod(pod, self.stop_timeout, "remove")
        self._release(pod)
        self._delete_secret(container_id)

    def _release(self, pod) -> None:
        """Take our finalizer off: a deleted pod then goes once its containers ended."""
        container_id = pod.metadata.name
        finalizers = pod.metadata.finalizers or []
        if FINALIZER in finalizers:
            index = finalizers.index(FINALIZER)
            # JSON patch tests: only our finalizer goes, only of the pod we judged ours (not one that
            # replaced it under the same name), and only if it is still where we saw it.
            patch = [{"op": "test", "path": "/metadata/uid", "value": pod.metadata.uid},
                     {"op": "test", "path": f"/metadata/finalizers/{index}", "value": FINALIZER},
                     {"op": "remove", "path": f"/metadata/finalizers/{index}"}]
            self._call(f"release pod {container_id} (remove its finalizer {FINALIZER})", self.core.patch_namespaced_pod,
                       container_id, self.namespace, patch, timeout=self.timeout, tolerate=(404,))

    def _delete_secret(self, pod_name: str) -> None:
        # The GC would delete it with the pod; deleting it now keeps no credentials around a moment longer.
        self._call(f"delete the config secret of {pod_name}", self.core.delete_namespaced_secret,
                   self._secret_name(pod_name), self.namespace, timeout=self.timeout, tolerate=(404,))

    # --- list, inspect --------------------------------------------------------------------------------
    def list(self) -> list[BotInfo]:
        try:
            pods = self._list_pages()
        except _Expired:
            # The continue token expired mid-listing (etcd compacted past it): one fresh listing.
            log.info("kubernetes: the pod listing's continue token expired; listing again")
            try:
                pods = self._list_pages()
            except _Expired as again:
                raise self._failed("list pods (its continue token expired twice)", again.exc) from again.exc
        now = datetime.now(timezone.utc)
        return [self._info(pod, now) for pod in pods if self._is_ours(pod)]

    def _list_pages(self) -> list:
        """Every pod of ours, page by page; _Expired when a continue token expired."""
        selector = f"{LABEL_MANAGED}=true,{LABEL_DEPLOYMENT}={self.deployment}"
        pods, token = [], None
        while True:
            try:
                page = self.core.list_namespaced_pod(
                    self.namespace, label_selector=selector, limit=LIST_PAGE_SIZE,
                    **({"_continue": token} if token else {}), _request_timeout=self.query_timeout)
            except ApiException as exc:
                if exc.status == 410 and token:
                    raise _Expired(exc) from exc
                raise self._failed("list pods", exc) from exc
            except _TRANSPORT_ERRORS as exc:
                raise self._failed("list pods", exc) from exc
            pods.extend(page.items or [])
            token = page.metadata._continue if page.metadata else None
            if not token:
                return pods

    def inspect(self, container_id: str) -> BotInfo | None:
        if not _DNS_LABEL.match(container_id or ""):
            return None
        pod = self._call(f"inspect pod {container_id}", self.core.read_namespaced_pod, container_id,
                         self.namespace, timeout=self.query_timeout, tolerate=(404,))
        if pod is None or not self._is_ours(pod):
            return None
        return self._info(pod, datetime.now(timezone.utc))


def api_client_from(kubeconfig: str, context: str, *, in_cluster: bool):
    """An API client from a kubeconfig file, the pod's service account, or the default kubeconfig.
    A bad kubeconfig is an error now (start-up), with the file named."""
    configuration = kubernetes.client.Configuration()
    try:
        if kubeconfig or not in_cluster:
            kubernetes.config.load_kube_config(config_file=kubeconfig or None, context=context or None,
                                               client_configuration=configuration, persist_config=False)
        else:
            kubernetes.config.load_incluster_config(client_configuration=configuration)
    except (kubernetes.config.ConfigException, OSError, ValueError, TypeError, yaml.YAMLError) as exc:
        source = (f"KUBERNETES_KUBECONFIG {kubeconfig!r}" if kubeconfig else
                  "the in-cluster service account" if in_cluster else "the default kubeconfig (~/.kube/config)")
        raise ValueError(f"Cannot configure the Kubernetes client from {source}"
                         f"{f' (context {context!r})' if context else ''}: {exc}") from exc
    # No retries inside a call: a failure is an OrchestratorError, retried by countdowns and sweeps.
    configuration.retries = False
    return kubernetes.client.ApiClient(configuration)
