"""A small in-memory Kubernetes API server over real HTTP, for testing the Kubernetes backend through
the official `kubernetes` client (which reaches it through a kubeconfig the fixture writes).

No cluster can run in this environment, so this fake implements the core/v1 endpoints the backend
uses, with the shapes of the Kubernetes API reference (https://kubernetes.io/docs/reference/
kubernetes-api/: Pod, Secret, Namespace, ListMeta, DeleteOptions, Status) and the API concepts page
(https://kubernetes.io/docs/reference/using-api/api-concepts/: label selectors, chunked lists with
`limit`/`continue` and the 410 `Expired` answer, JSON patch):

- `POST|GET /api/v1/namespaces/<ns>/pods`                  create (201; 409 AlreadyExists; 422
  Invalid for a bad name, label value, container or restartPolicy; 404 for an unknown namespace);
  list with `labelSelector` (=, ==, !=, in, notin, exists, !exists), `limit`, `continue`
- `GET|DELETE|PATCH /api/v1/namespaces/<ns>/pods/<name>`  read; delete with `gracePeriodSeconds`
  (query or DeleteOptions body), `preconditions.uid` (409 Conflict), `propagationPolicy` (Orphan
  keeps the pod's dependents, dropping their reference); JSON patch
  (test, add, remove, replace) or merge patch
- `POST /api/v1/namespaces/<ns>/secrets`, `GET|DELETE .../secrets/<name>`   (`stringData` folded
  into `data`, as the API server does)
- `GET /api/v1/namespaces/<name>`                          a Namespace with its uid (kube-system too)

Every error is a `kind: Status` body (reason AlreadyExists, NotFound, Conflict, Invalid, Expired,
TooManyRequests, InternalError, Unauthorized...) with its code. Every request needs the bearer token.

What it simulates beyond storage (the scheduler, a kubelet and the garbage collector), on each
request: a pod is scheduled at once (`auto_schedule`), its container is created once its
`secretKeyRef` Secrets exist (until then: waiting, CreateContainerConfigError, as a kubelet says)
and runs (`auto_run`); a graceful delete sets `deletionTimestamp` = now + grace, the bot obeys
SIGTERM at once with exit 0 (`ignore_sigterm(name)`: it is SIGKILLed, 137, when the grace ends);
the containers ended, a pod with no finalizer is removed, and a removed pod takes the Secrets it
owns (ownerReferences) with it. Tests drive the rest: `unschedulable`, `image_pull_error`,
`finish` (exit by itself), `oom_kill`, `evict`, `exceed_deadline`, `lose_node` (phase Unknown),
`lose_node_unreachable` (the taint manager deletes the pod of a node that stopped reporting),
`drain` (the eviction API), `age`.
Faults: `fail_next(status, reason)`, `expire_continue_tokens(n)`, `delay` (seconds per answer),
`gc_enabled = False` (a lagging garbage collector).
Every request is recorded as (API group, resource, RBAC verb) in `calls`.
"""
from __future__ import annotations

import base64
import copy
import json
import re
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler
from urllib.parse import parse_qs, unquote, urlsplit

from tests.orchestrators.wire_fake import WireFake

_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_PATH = re.compile(r"^/api/v1/namespaces(?:/(?P<ns>[^/]+)(?:/(?P<resource>pods|secrets)(?:/(?P<name>[^/]+)"
                   r"(?:/(?P<sub>[^/]+))?)?)?)?$")


def _stamp(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _now() -> datetime:
    return datetime.now(timezone.utc)


class ApiError(Exception):
    def __init__(self, code: int, reason: str, message: str, *, name: str = "", kind: str = ""):
        super().__init__(message)
        self.code, self.reason, self.message, self.name, self.kind = code, reason, message, name, kind

    def status(self) -> dict:
        body = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": self.message, "reason": self.reason, "code": self.code}
        if self.name or self.kind:
            body["details"] = {"name": self.name, "kind": self.kind}
        return body


def not_found(kind: str, name: str) -> ApiError:
    return ApiError(404, "NotFound", f'{kind} "{name}" not found', name=name, kind=kind)


# --- label selectors (https://kubernetes.io/docs/concepts/overview/working-with-objects/labels/) ---
def parse_selector(raw: str):
    """[(key, op, values)], op one of =, !=, in, notin, exists, !exists. ValueError when malformed."""
    requirements, depth, current = [], 0, ""
    parts = []
    for char in raw:
        depth += char == "("
        depth -= char == ")"
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    for part in (p.strip() for p in parts):
        if not part:
            if raw.strip():
                raise ValueError(f"found '', expected: identifier in {raw!r}")
            continue
        if match := re.fullmatch(r"([\w./-]+)\s+(in|notin)\s+\(([^()]*)\)", part):
            values = {v.strip() for v in match.group(3).split(",") if v.strip()}
            requirements.append((match.group(1), match.group(2), values))
        elif match := re.fullmatch(r"([\w./-]+)\s*(==|=|!=)\s*([\w./-]*)", part):
            op = "=" if match.group(2) in ("=", "==") else "!="
            requirements.append((match.group(1), op, {match.group(3)}))
        elif match := re.fullmatch(r"!\s*([\w./-]+)", part):
            requirements.append((match.group(1), "!exists", set()))
        elif re.fullmatch(r"[\w./-]+", part):
            requirements.append((part, "exists", set()))
        else:
            raise ValueError(f"unable to parse requirement: {part!r}")
    return requirements


def selector_matches(requirements, labels: dict) -> bool:
    for key, op, values in requirements:
        present, value = key in labels, labels.get(key)
        if op == "=" and value not in values:
            return False
        if op in ("!=", "notin") and present and value in values:
            return False
        if op == "in" and (not present or value not in values):
            return False
        if op == "exists" and not present:
            return False
        if op == "!exists" and present:
            return False
    return True


# --- JSON patch (RFC 6902), enough for object metadata ------------------------------------------------
def _pointer(path: str) -> list[str]:
    return [p.replace("~1", "/").replace("~0", "~") for p in path.split("/")[1:]]


def json_patch(document: dict, operations: list) -> dict:
    doc = copy.deepcopy(document)
    for op in operations:
        keys = _pointer(op.get("path", ""))
        if not keys:
            raise ValueError("empty path")
        parent = doc
        for key in keys[:-1]:
            parent = parent[int(key)] if isinstance(parent, list) else parent[key]
        last = keys[-1]
        kind = op.get("op")
        if isinstance(parent, list):
            index = len(parent) if last == "-" else int(last)
            if kind == "test" and (index >= len(parent) or parent[index] != op.get("value")):
                raise ValueError(f"testing value {op.get('path')} failed")
            if kind == "remove":
                parent.pop(index)
            elif kind == "add":
                parent.insert(index, op.get("value"))
            elif kind == "replace":
                parent[index] = op.get("value")
        else:
            if kind == "test" and parent.get(last) != op.get("value"):
                raise ValueError(f"testing value {op.get('path')} failed")
            if kind == "remove":
                if last not in parent:
                    raise ValueError(f"unable to remove nonexistent key: {last}")
                del parent[last]
            elif kind in ("add", "replace"):
                parent[last] = op.get("value")
        if kind not in ("test", "remove", "add", "replace"):
            raise ValueError(f"unsupported op {kind!r}")
    return doc


def merge_patch(document, patch):
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(document) if isinstance(document, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


@dataclass
class Fault:
    code: int
    reason: str
    message: str
    method: str | None
    resource: str | None
    remaining: int


@dataclass
class Kubelet:
    """What the fake's node knows of one pod's bot container."""

    scheduled: bool = True
    container: str = "creating"           # creating | waiting | running | terminated
    waiting_reason: str = ""
    waiting_message: str = ""
    exit_code: int | None = None
    terminated_reason: str = ""
    started_at: datetime | None = None
    ignore_sigterm: bool = False
    pod_phase: str | None = None          # forced phase (Unknown), else derived
    pod_reason: str = ""
    pod_message: str = ""
    unschedulable_message: str = ""
    conditions: list = field(default_factory=list)  # set by controllers (DisruptionTarget)
    reachable: bool = True                # False: the node stopped reporting (nothing changes)


@dataclass
class Call:
    method: str
    path: str
    query: dict
    group: str
    resource: str
    verb: str
    body: object = None


class KubernetesFake(WireFake):
    def __init__(self, *, token: str = "fake-token"):
        self.token = token
        self.namespaces: dict[str, dict] = {}
        self.pods: dict[tuple[str, str], dict] = {}
        self.kubelets: dict[tuple[str, str], Kubelet] = {}
        self.secrets: dict[tuple[str, str], dict] = {}
        self.calls: list[Call] = []
        self.auto_schedule = True
        self.auto_run = True
        # False: as kubelets that leave a deleted pod's phase as it was once its containers ended.
        self.terminal_phase_on_delete = True
        self.delay = 0.0
        self._faults: list[Fault] = []
        self._expire_tokens = 0
        self._orphaned: set[str] = set()  # uids of pods deleted with propagationPolicy=Orphan
        self.gc_enabled = True  # False: the garbage collector lags (dependents outlive their owner)
        self._rv = 1000
        self._lock = threading.RLock()
        for name in ("default", "kube-system"):
            self.add_namespace(name)

    # --- server ---------------------------------------------------------------------------------------
    def start(self) -> str:
        return self._serve("kubernetes-fake")

    def kubeconfig(self, namespace: str = "default") -> str:
        """A kubeconfig (YAML is a superset of JSON) naming this server and its bearer token."""
        return json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "fake",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "fake", "user": {"token": self.token}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake", "namespace": namespace}}],
        })

    # --- test controls -------------------------------------------------------------------------------
    def add_namespace(self, name: str) -> dict:
        with self._lock:
            namespace = {"apiVersion": "v1", "kind": "Namespace",
                         "metadata": {"name": name, "uid": str(uuid.uuid4()), "resourceVersion": self._next_rv(),
                                      "creationTimestamp": _stamp(_now())},
                         "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}}
            self.namespaces[name] = namespace
            return namespace

    def fail_next(self, code: int = 500, reason: str = "InternalError", message: str = "etcdserver: request timed out",
                  *, times: int = 1, method: str | None = None, resource: str | None = None) -> None:
        with self._lock:
            self._faults.append(Fault(code, reason, message, method, resource, times))

    def expire_continue_tokens(self, times: int = 1) -> None:
        """The next `times` list requests that carry a continue token answer 410 Expired (etcd
        compacted past the token's revision)."""
        with self._lock:
            self._expire_tokens = times

    def kubelet(self, name: str, namespace: str) -> Kubelet:
        return self.kubelets[(namespace, name)]

    def _drive(self, name: str, namespace: str, **changes) -> None:
        with self._lock:
            node = self.kubelets[(namespace, name)]
            for key, value in changes.items():
                setattr(node, key, value)
            self._sync(namespace, name)

    def unschedulable(self, name: str, namespace: str, message: str = "0/3 nodes are available: 3 Insufficient memory.") -> None:
        """As if the scheduler never found a node for it (a pod once placed never goes back)."""
        self._drive(name, namespace, scheduled=False, container="creating", started_at=None,
                    unschedulable_message=message)

    def image_pull_error(self, name: str, namespace: str, reason: str = "ImagePullBackOff",
                         message: str = 'Back-off pulling image "bot:missing"') -> None:
        self._drive(name, namespace, scheduled=True, container="waiting", waiting_reason=reason, waiting_message=message)

    def finish(self, name: str, namespace: str, exit_code: int, reason: str = "") -> None:
        """The bot's container exits by itself."""
        self._drive(name, namespace, container="terminated", exit_code=exit_code,
                    terminated_reason=reason or ("Completed" if exit_code == 0 else "Error"))

    def oom_kill(self, name: str, namespace: str) -> None:
        self.finish(name, namespace, 137, reason="OOMKilled")

    def evict(self, name: str, namespace: str) -> None:
        self._drive(name, namespace, container="terminated", exit_code=137, terminated_reason="Error",
                    pod_phase="Failed", pod_reason="Evicted",
                    pod_message="The node was low on resource: memory. Threshold quantity: 100Mi, available: 90Mi.")

    def exceed_deadline(self, name: str, namespace: str) -> None:
        self._drive(name, namespace, container="terminated", exit_code=137, terminated_reason="Error",
                    pod_phase="Failed", pod_reason="DeadlineExceeded",
                    pod_message="Pod was active on the node longer than the specified deadline")

    def lose_node(self, name: str, namespace: str) -> None:
        self._drive(name, namespace, pod_phase="Unknown", pod_reason="NodeLost",
                    pod_message="Node node-1 which was running pod is unresponsive")

    def drain(self, name: str, namespace: str) -> None:
        """`kubectl drain`: the eviction API marks the pod and deletes it with its grace period."""
        self._disrupt(name, namespace, "EvictionByEvictionAPI", "Eviction API: evicting")

    def lose_node_unreachable(self, name: str, namespace: str, grace: int = 0) -> None:
        """The node stops reporting; the taint manager deletes its pods (the kubelet never confirms)."""
        self._drive(name, namespace, reachable=False)
        self._disrupt(name, namespace, "DeletionByTaintManager",
                      "Taint manager: deleting due to NoExecute taint", grace=grace)

    def _disrupt(self, name: str, namespace: str, reason: str, message: str, grace: int | None = None) -> None:
        with self._lock:
            pod, node = self.pods[(namespace, name)], self.kubelets[(namespace, name)]
            node.conditions.append({"type": "DisruptionTarget", "status": "True", "reason": reason,
                                    "message": message, "lastProbeTime": None,
                                    "lastTransitionTime": _stamp(_now())})
            grace = pod["spec"].get("terminationGracePeriodSeconds", 30) if grace is None else grace
            pod["metadata"]["deletionTimestamp"] = _stamp(_now() + timedelta(seconds=grace))
            pod["metadata"]["deletionGracePeriodSeconds"] = grace
            self._sync(namespace, name)

    def ignore_sigterm(self, name: str, namespace: str) -> None:
        self._drive(name, namespace, ignore_sigterm=True)

    def age(self, name: str, namespace: str, seconds: float) -> None:
        """Move the pod's creation back in time."""
        with self._lock:
            meta = self.pods[(namespace, name)]["metadata"]
            created = datetime.strptime(meta["creationTimestamp"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
            meta["creationTimestamp"] = _stamp(created - timedelta(seconds=seconds))

    def verbs_seen(self) -> set[tuple[str, str, str]]:
        with self._lock:
            return {(c.group, c.resource, c.verb) for c in self.calls}

    # --- the simulated node and garbage collector ---------------------------------------------------------
    def _next_rv(self) -> str:
        self._rv += 1
        return str(self._rv)

    def _sync_all(self) -> None:
        for namespace, name in list(self.pods):
            self._sync(namespace, name)

    def _sync(self, namespace: str, name: str) -> None:
        pod = self.pods.get((namespace, name))
        if pod is None:
            return
        node, meta, now = self.kubelets[(namespace, name)], pod["metadata"], _now()
        if not node.reachable:
            # No kubelet reports: the containers' state stays what it last was; controllers'
            # conditions still show, and nothing confirms the end of a deleted pod.
            self._render_status(pod, node)
            return
        deleting = meta.get("deletionTimestamp")
        if node.scheduled and node.container == "creating" and self.auto_run and not deleting:
            missing = [ref for ref in self._secret_refs(pod) if (namespace, ref) not in self.secrets]
            if missing:
                node.waiting_reason, node.waiting_message = "CreateContainerConfigError", f'secret "{missing[0]}" not found'
            else:
                node.container, node.started_at, node.waiting_reason = "running", now, ""
        if deleting:
            if node.container == "running":
                grace = meta.get("deletionGracePeriodSeconds") or 0
                if grace == 0:
                    node.container, node.exit_code, node.terminated_reason = "terminated", 137, "Error"
                elif not node.ignore_sigterm:
                    node.container, node.exit_code, node.terminated_reason = "terminated", 0, "Completed"
                elif datetime.strptime(deleting, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc) <= now:
                    node.container, node.exit_code, node.terminated_reason = "terminated", 137, "Error"
            elif node.container in ("creating", "waiting") and node.scheduled:
                node.container = "never-ran"  # (an unscheduled pod has no kubelet to say so)
        self._render_status(pod, node)
        if deleting and node.container != "running" and not meta.get("finalizers"):
            self._remove_pod(namespace, name)

    @staticmethod
    def _secret_refs(pod: dict) -> list[str]:
        refs = []
        for container in pod["spec"].get("containers", []):
            for env in container.get("env") or []:
                ref = ((env.get("valueFrom") or {}).get("secretKeyRef") or {})
                if ref.get("name") and not ref.get("optional"):
                    refs.append(ref["name"])
        return refs

    def _render_status(self, pod: dict, node: Kubelet) -> None:
        spec, meta = pod["spec"], pod["metadata"]
        created = meta["creationTimestamp"]
        container = spec["containers"][0]
        status = {"phase": "Pending", "qosClass": "BestEffort",
                  "conditions": [{"type": "PodScheduled", "status": "True" if node.scheduled else "False",
                                  "lastProbeTime": None, "lastTransitionTime": created}]}
        status["conditions"] += node.conditions
        if not node.scheduled:
            status["conditions"][0].update(reason="Unschedulable", message=node.unschedulable_message)
            spec.pop("nodeName", None)
            pod["status"] = status
            return
        spec["nodeName"] = "node-1"
        status.update(hostIP="10.0.0.1", podIP="10.244.0.7", startTime=created)
        state: dict
        if node.container == "running":
            state, status["phase"] = {"running": {"startedAt": _stamp(node.started_at)}}, "Running"
        elif node.container == "terminated":
            state = {"terminated": {"exitCode": node.exit_code, "reason": node.terminated_reason,
                                    "startedAt": _stamp(node.started_at or _now()), "finishedAt": _stamp(_now()),
                                    "containerID": f"containerd://{meta['uid'].replace('-', '')}"}}
            status["phase"] = "Succeeded" if node.exit_code == 0 else "Failed"
            if meta.get("deletionTimestamp") and not self.terminal_phase_on_delete and node.started_at:
                status["phase"] = "Running"
        elif node.container == "never-ran":
            # What a kubelet reports for a container deleted before it ever ran.
            state, status["phase"] = {"terminated": {"exitCode": 137, "reason": "ContainerStatusUnknown",
                                                     "message": "The container could not be located when the pod was deleted."}}, "Failed"
        else:
            state = {"waiting": {"reason": node.waiting_reason or "ContainerCreating",
                                 **({"message": node.waiting_message} if node.waiting_message else {})}}
        if node.pod_phase:
            status["phase"] = node.pod_phase
        if node.pod_reason:
            status["reason"], status["message"] = node.pod_reason, node.pod_message
        status["containerStatuses"] = [{
            "name": container["name"], "image": container.get("image", ""),
            "imageID": "" if node.container in ("creating", "waiting") else f"docker.io/library/bot@sha256:{'0' * 64}",
            "ready": node.container == "running", "restartCount": 0, "started": node.container == "running",
            "state": state}]
        pod["status"] = status

    def _remove_pod(self, namespace: str, name: str) -> None:
        pod = self.pods.pop((namespace, name))
        self.kubelets.pop((namespace, name), None)
        uid = pod["metadata"]["uid"]
        if not self.gc_enabled:
            return
        # The garbage collector: a dependent whose owners are all gone goes too, unless the owner
        # was deleted with propagationPolicy=Orphan (then the reference is dropped and it stays).
        for key, secret in list(self.secrets.items()):
            owners = secret["metadata"].get("ownerReferences") or []
            if not any(o.get("uid") == uid for o in owners):
                continue
            if uid in self._orphaned:
                secret["metadata"]["ownerReferences"] = [o for o in owners if o.get("uid") != uid]
            elif all(o.get("uid") == uid or not self._uid_exists(o.get("uid")) for o in owners):
                del self.secrets[key]

    def _uid_exists(self, uid: str | None) -> bool:
        return any(p["metadata"]["uid"] == uid for p in self.pods.values())

    # --- HTTP ------------------------------------------------------------------------------------------
    def _handle(self, handler: BaseHTTPRequestHandler, method: str) -> None:
        url = urlsplit(handler.path)
        query = parse_qs(url.query, keep_blank_values=True)
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length) if length else b""
        content_type = handler.headers.get("Content-Type") or ""
        if self.delay:
            time.sleep(self.delay)
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        code, answer = self._answer(method, unquote(url.path), query, body, content_type,
                                    handler.headers.get("Authorization"))
        data = json.dumps(answer).encode()
        try:
            handler.send_response(code)
            handler.send_header("Content-Type", "application/json")
            handler.send_header("Content-Length", str(len(data)))
            handler.end_headers()
            handler.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (its timeout)

    def _answer(self, method, path, query, body, content_type, authorization) -> tuple[int, dict]:
        match = _PATH.match(path)
        with self._lock:
            try:
                if authorization != f"Bearer {self.token}":
                    raise ApiError(401, "Unauthorized", "Unauthorized")
                if match is None:
                    raise ApiError(404, "NotFound", "the server could not find the requested resource")
                namespace, resource, name, sub = match.group("ns"), match.group("resource"), match.group("name"), match.group("sub")
                if resource is None:
                    resource, name, namespace = "namespaces", namespace, None
                verb = {"GET": "get" if name else ("watch" if query.get("watch") else "list"), "POST": "create",
                        "DELETE": "delete" if name else "deletecollection", "PATCH": "patch", "PUT": "update"}[method]
                self.calls.append(Call(method, path, query, "", f"{resource}/{sub}" if sub else resource, verb, body))
                for fault in self._faults:
                    if fault.remaining > 0 and fault.method in (None, method) and fault.resource in (None, resource):
                        fault.remaining -= 1
                        raise ApiError(fault.code, fault.reason, fault.message)
                self._sync_all()
                if sub is not None:
                    raise ApiError(404, "NotFound", "the server could not find the requested resource")
                if resource == "namespaces":
                    if method != "GET" or not name:
                        raise ApiError(405, "MethodNotAllowed", "the fake serves only namespace reads")
                    if name not in self.namespaces:
                        raise not_found("namespaces", name)
                    return 200, self.namespaces[name]
                if namespace not in self.namespaces:
                    raise not_found("namespaces", namespace)
                handler = getattr(self, f"_{resource}_{verb}", None)
                if handler is None:
                    raise ApiError(405, "MethodNotAllowed", f"{method} is not supported on {resource} by the fake")
                return handler(namespace, name, query, body, content_type)
            except ApiError as error:
                return error.code, error.status()

    # --- pods ---------------------------------------------------------------------------------------------
    def _pods_create(self, namespace, _name, query, body, content_type):
        if not isinstance(body, dict) or body.get("kind", "Pod") != "Pod":
            raise ApiError(400, "BadRequest", "the body of the request was in an unknown format")
        meta = body.setdefault("metadata", {})
        name = meta.get("name") or ""
        if meta.get("namespace") not in (None, namespace):
            raise ApiError(400, "BadRequest", "the namespace of the provided object does not match the namespace sent on the request")
        problems = []
        if not name or len(name) > 253 or not _DNS_SUBDOMAIN.match(name):
            problems.append(f'metadata.name: Invalid value: "{name}": a lowercase RFC 1123 subdomain must consist of '
                            f"lower case alphanumeric characters, '-' or '.'")
        for key, value in (meta.get("labels") or {}).items():
            if not isinstance(value, str) or len(value) > 63 or not _LABEL_VALUE.match(value):
                problems.append(f'metadata.labels: Invalid value: "{value}": must be no more than 63 characters')
        spec = body.get("spec") or {}
        containers = spec.get("containers") or []
        if not containers:
            problems.append("spec.containers: Required value")
        for i, container in enumerate(containers):
            if not container.get("name"):
                problems.append(f"spec.containers[{i}].name: Required value")
            if not container.get("image"):
                problems.append(f"spec.containers[{i}].image: Required value")
        if spec.get("restartPolicy", "Always") not in ("Always", "OnFailure", "Never"):
            problems.append(f'spec.restartPolicy: Unsupported value: "{spec.get("restartPolicy")}"')
        deadline = spec.get("activeDeadlineSeconds")
        if deadline is not None and (not isinstance(deadline, int) or deadline <= 0):
            problems.append(f"spec.activeDeadlineSeconds: Invalid value: {deadline}: must be greater than 0")
        if problems:
            raise ApiError(422, "Invalid", f'Pod "{name}" is invalid: ' + ", ".join(problems), name=name, kind="Pod")
        if (namespace, name) in self.pods:
            raise ApiError(409, "AlreadyExists", f'pods "{name}" already exists', name=name, kind="pods")
        pod = copy.deepcopy(body)
        pod.update(apiVersion="v1", kind="Pod")
        pod["metadata"].update(namespace=namespace, uid=str(uuid.uuid4()), resourceVersion=self._next_rv(),
                               creationTimestamp=_stamp(_now()))
        spec = pod.setdefault("spec", {})
        spec.setdefault("restartPolicy", "Always")
        spec.setdefault("terminationGracePeriodSeconds", 30)
        spec.setdefault("dnsPolicy", "ClusterFirst")
        spec.setdefault("schedulerName", "default-scheduler")
        self.pods[(namespace, name)] = pod
        self.kubelets[(namespace, name)] = Kubelet(scheduled=self.auto_schedule)
        self._sync(namespace, name)
        return 201, pod

    def _pod(self, namespace, name) -> dict:
        pod = self.pods.get((namespace, name))
        if pod is None:
            raise not_found("pods", name)
        return pod

    def _pods_get(self, namespace, name, query, body, content_type):
        return 200, self._pod(namespace, name)

    def _pods_list(self, namespace, _name, query, body, content_type):
        try:
            requirements = parse_selector(query.get("labelSelector", [""])[0])
        except ValueError as exc:
            raise ApiError(400, "BadRequest", f"unable to parse requirement: {exc}")
        token = query.get("continue", [""])[0]
        start_after = ""
        if token:
            if self._expire_tokens > 0:
                self._expire_tokens -= 1
                raise ApiError(410, "Expired", "The provided continue parameter is too old to display a consistent "
                                              "list result. You can start a new list without the continue parameter.")
            try:
                start_after = json.loads(base64.urlsafe_b64decode(token))["start"]
            except (ValueError, KeyError, TypeError):
                raise ApiError(400, "BadRequest", "continue key is not valid: illegal base64 data")
        items = sorted((p for (ns, n), p in self.pods.items()
                        if ns == namespace and n > start_after and selector_matches(requirements, p["metadata"].get("labels") or {})),
                       key=lambda p: p["metadata"]["name"])
        limit = int(query.get("limit", ["0"])[0] or 0)
        metadata = {"resourceVersion": str(self._rv)}
        if limit and len(items) > limit:
            items = items[:limit]
            metadata["continue"] = base64.urlsafe_b64encode(json.dumps(
                {"v": "meta.k8s.io/v1", "rv": self._rv, "start": items[-1]["metadata"]["name"]}).encode()).decode()
            metadata["remainingItemCount"] = sum(1 for (ns, n) in self.pods if ns == namespace and n > items[-1]["metadata"]["name"])
        return 200, {"apiVersion": "v1", "kind": "PodList", "metadata": metadata, "items": items}

    def _pods_delete(self, namespace, name, query, body, content_type):
        pod = self._pod(namespace, name)
        options = body if isinstance(body, dict) else {}
        uid = (options.get("preconditions") or {}).get("uid")
        if uid and uid != pod["metadata"]["uid"]:
            raise ApiError(409, "Conflict", f"Precondition failed: UID in precondition: {uid}, UID in object meta: "
                                            f"{pod['metadata']['uid']}", name=name, kind="pods")
        policy = query.get("propagationPolicy", [options.get("propagationPolicy")])[0]
        if policy not in (None, "Orphan", "Background", "Foreground"):
            raise ApiError(422, "Invalid", f'DeleteOptions.meta.k8s.io "" is invalid: propagationPolicy: Unsupported '
                                          f'value: "{policy}": supported values: "Foreground", "Background", "Orphan"')
        if policy == "Orphan":
            self._orphaned.add(pod["metadata"]["uid"])
        grace = options.get("gracePeriodSeconds")
        if "gracePeriodSeconds" in query:
            grace = int(query["gracePeriodSeconds"][0])
        if grace is None:
            grace = pod["spec"].get("terminationGracePeriodSeconds", 30)
        node, meta = self.kubelets[(namespace, name)], pod["metadata"]
        if not node.scheduled or node.container not in ("running", "creating", "waiting"):
            grace = 0  # as the API server: a pod not running on a node goes at once
        deadline = _now() + timedelta(seconds=grace)
        current = meta.get("deletionTimestamp")
        if current is None or _stamp(deadline) < current:  # may be shortened, never extended
            meta["deletionTimestamp"] = _stamp(deadline)
            meta["deletionGracePeriodSeconds"] = grace
            meta["resourceVersion"] = self._next_rv()
        answer = copy.deepcopy(pod)
        self._sync(namespace, name)
        return 200, answer

    def _pods_patch(self, namespace, name, query, body, content_type):
        pod = self._pod(namespace, name)
        try:
            if content_type.startswith("application/json-patch+json"):
                if not isinstance(body, list):
                    raise ValueError("a JSON patch is a list of operations")
                patched = json_patch(pod, body)
            elif content_type.split(";")[0] in ("application/merge-patch+json", "application/strategic-merge-patch+json"):
                patched = merge_patch(pod, body)
            else:
                raise ApiError(415, "UnsupportedMediaType", f"the body of the request was in an unknown format: {content_type}")
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise ApiError(422, "Invalid", f'Pod "{name}" is invalid: {exc}', name=name, kind="Pod")
        if patched["metadata"].get("uid") != pod["metadata"]["uid"] or patched["spec"].get("containers") != pod["spec"]["containers"]:
            raise ApiError(422, "Invalid", f'Pod "{name}" is invalid: spec: Forbidden: pod updates may not change fields other than ...',
                           name=name, kind="Pod")
        patched["metadata"]["resourceVersion"] = self._next_rv()
        self.pods[(namespace, name)] = patched
        answer = copy.deepcopy(patched)
        self._sync(namespace, name)
        return 200, answer

    # --- secrets -------------------------------------------------------------------------------------------
    def _secrets_create(self, namespace, _name, query, body, content_type):
        if not isinstance(body, dict):
            raise ApiError(400, "BadRequest", "the body of the request was in an unknown format")
        meta = body.setdefault("metadata", {})
        name = meta.get("name") or ""
        if not name or not _DNS_SUBDOMAIN.match(name) or len(name) > 253:
            raise ApiError(422, "Invalid", f'Secret "{name}" is invalid: metadata.name: Invalid value', name=name, kind="Secret")
        for owner in meta.get("ownerReferences") or []:
            if not all(owner.get(k) for k in ("apiVersion", "kind", "name", "uid")):
                raise ApiError(422, "Invalid", f'Secret "{name}" is invalid: metadata.ownerReferences: Required value',
                               name=name, kind="Secret")
        data = dict(body.get("data") or {})
        for key, value in data.items():
            try:
                base64.b64decode(value, validate=True)
            except (ValueError, TypeError):
                raise ApiError(400, "BadRequest", f"illegal base64 data in data[{key}]")
        for key, value in (body.pop("stringData", None) or {}).items():
            data[key] = base64.b64encode(value.encode()).decode()
        if (namespace, name) in self.secrets:
            raise ApiError(409, "AlreadyExists", f'secrets "{name}" already exists', name=name, kind="secrets")
        secret = copy.deepcopy(body)
        secret.update(apiVersion="v1", kind="Secret", data=data)
        secret.setdefault("type", "Opaque")
        secret["metadata"].update(namespace=namespace, uid=str(uuid.uuid4()), resourceVersion=self._next_rv(),
                                  creationTimestamp=_stamp(_now()))
        self.secrets[(namespace, name)] = secret
        self._sync_all()
        return 201, secret

    def _secrets_get(self, namespace, name, query, body, content_type):
        secret = self.secrets.get((namespace, name))
        if secret is None:
            raise not_found("secrets", name)
        return 200, secret

    def _secrets_delete(self, namespace, name, query, body, content_type):
        secret = self.secrets.pop((namespace, name), None)
        if secret is None:
            raise not_found("secrets", name)
        return 200, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                     "details": {"name": name, "kind": "secrets", "uid": secret["metadata"]["uid"]}}

    def secret_config(self, name: str, namespace: str) -> dict:
        """The BOT_CONFIG a pod's container would read from its Secret."""
        with self._lock:
            secret = self.secrets[(namespace, name)]
            return json.loads(base64.b64decode(secret["data"]["BOT_CONFIG"]))
