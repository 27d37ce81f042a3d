"""A small in-memory Nomad served over real HTTP, for testing the Nomad backend through python-nomad.

No Nomad agent can run in this environment, so this fake implements the endpoints the backend
uses, with the request and response shapes of the Nomad HTTP API documentation
(https://developer.hashicorp.com/nomad/api-docs): jobs, job, dispatch, allocations.

- `GET  /v1/jobs?prefix=&meta=`            JobListStub list (`Meta` only with meta=true, Nomad >= 1.6)
- `GET  /v1/job/<id>`                      Job, 404 "job not found"
- `GET  /v1/job/<id>/allocations`          AllocListStub list ([] for an unknown job, as Nomad)
- `POST|PUT /v1/job/<id>/dispatch?idempotency_token=`  DispatchResponse. As in Nomad, the token is
  read from the query string only; a token sent in the body (python-nomad's dispatch_job) is ignored.
- `DELETE /v1/job/<id>?purge=`             JobDeregisterResponse, 404 "job not found"
- `GET  /v1/allocations?filter=`           AllocListStub list; only `JobID matches "<re>"` filters
  are understood (anything else answers 400, as Nomad does for a filter it cannot evaluate)
- `GET|PUT|DELETE /v1/var/<path>?cas=`     Variable (decrypted Items); PUT creates or updates, with
  `cas=<index>` only when the variable's ModifyIndex is that index (`cas=0`: only when it does not
  exist), else 409 with the current variable (an empty object when there is none); GET 404
  "variable not found"; DELETE removes it (a cas mismatch: 409 as PUT)
- `GET  /v1/vars?prefix=`                  VariableMetadata list (no Items)

Job ids with a slash (`parent/dispatch-...`) work both raw and %2F-escaped, like Go's URL.Path.

What the fake simulates beyond storage (the scheduler and a client node): a dispatch places one
allocation that is `running` at once (the client first renders the task's env template: with
`BOT_CONFIG_VAR` in the job's Meta, `task_env(job_id)` is what `nomadVar` read from that variable
at placement, as the job file of docs/orchestrators.md does) (`pending` with `auto_run=False`, none with
`auto_place=False`); `reschedule()` loses it and places a replacement; a deregistration kills
the task gracefully (exit 0 unless `stop_exit_code` says otherwise), the allocation turns
`complete`; `finish(job_id, code)` makes the task exit by itself. Faults: `fail_next()` answers an
error status, `delay` slows every answer (for client timeouts), `acl_token` requires
X-Nomad-Token.
"""
from __future__ import annotations

import json
import re
import threading
import time
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from urllib.parse import parse_qs, unquote, urlsplit

from tests.orchestrators.wire_fake import WireFake


def _now_ns() -> int:
    return time.time_ns()


def _go_bool(raw: str | None) -> bool:
    """strconv.ParseBool, which Nomad uses for boolean query parameters."""
    if raw is None or raw == "":
        return False
    if raw in ("1", "t", "T", "TRUE", "true", "True"):
        return True
    if raw in ("0", "f", "F", "FALSE", "false", "False"):
        return False
    raise ValueError(f'strconv.ParseBool: parsing "{raw}": invalid syntax')


class HTTPError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class Fault:
    status: int
    body: str
    method: str | None
    path_prefix: str | None
    remaining: int


@dataclass
class RecordedRequest:
    method: str
    path: str
    query: dict[str, list[str]]
    body: object
    headers: dict[str, str]


class NomadFake(WireFake):
    def __init__(self):
        self.jobs: dict[tuple[str, str], dict] = {}       # (namespace, id) -> Job
        self.allocs: dict[str, dict] = {}                 # alloc id -> Allocation
        self.variables: dict[tuple[str, str], dict] = {}  # (namespace, path) -> Variable
        self.rendered_env: dict[str, dict] = {}           # alloc id -> env the template rendered
        self.requests: list[RecordedRequest] = []
        self.auto_place = True        # the scheduler places an allocation on dispatch
        self.auto_run = True          # ... which starts running at once (else stays pending)
        self.list_meta_supported = True  # False: a Nomad < 1.6, whose job list has no Meta
        self.stop_exit_code = 0
        self.delay = 0.0
        self.acl_token: str | None = None
        self._faults: list[Fault] = []
        self._index = 10
        self._lock = threading.RLock()

    # --- server -----------------------------------------------------------------------------------
    def start(self) -> str:
        return self._serve("nomad-fake")

    # --- test controls ----------------------------------------------------------------------------
    def register_parameterized_job(self, job_id: str, *, namespace: str = "default",
                                   meta_required=("BOT_CONFIG_VAR", "BOT_NAME", "BOT_LABELS"),
                                   meta_optional=(), meta: dict | None = None) -> dict:
        """What `nomad job run` of a parameterized batch job leaves in the state store."""
        with self._lock:
            index = self._next_index()
            job = {
                "ID": job_id, "Name": job_id, "Namespace": namespace, "Region": "global",
                "Type": "batch", "Priority": 50, "Datacenters": ["dc1"],
                "ParentID": "", "Dispatched": False, "Stop": False, "Status": "running",
                "StatusDescription": "",
                "ParameterizedJob": {"Payload": "forbidden", "MetaRequired": list(meta_required),
                                     "MetaOptional": list(meta_optional)},
                "Meta": dict(meta or {}), "Payload": None,
                "TaskGroups": [{"Name": "bot", "Count": 1, "Tasks": [{"Name": "bot", "Driver": "docker",
                                                                      "KillTimeout": 10_000_000_000}]}],
                "SubmitTime": _now_ns(), "CreateIndex": index, "ModifyIndex": index,
                "JobModifyIndex": index, "Version": 0, "DispatchIdempotencyToken": "",
            }
            self.jobs[(namespace, job_id)] = job
            return job

    def fail_next(self, status: int = 500, body: str = "rpc error: No cluster leader", *, times: int = 1,
                  method: str | None = None, path_prefix: str | None = None) -> None:
        with self._lock:
            self._faults.append(Fault(status, body, method, path_prefix, times))

    def finish(self, job_id: str, exit_code: int, namespace: str = "default") -> None:
        """The bot's task exits by itself with `exit_code` (batch jobs: no restart)."""
        with self._lock:
            for alloc in self._allocs_of(namespace, job_id):
                if alloc["ClientStatus"] in ("pending", "running"):
                    self._terminate(alloc, exit_code, killed=False)
            self._refresh_job_status(namespace, job_id)

    def fail_to_start(self, job_id: str, namespace: str = "default") -> None:
        """The task never runs (image pull or driver failure): failed, with no exit code."""
        with self._lock:
            for alloc in self._allocs_of(namespace, job_id):
                state = alloc["TaskStates"]["bot"]
                state["Events"] += [self._event("Driver Failure", "failed to pull image", fails_task=True),
                                    self._event("Not Restarting", "Error was unrecoverable", fails_task=True)]
                state["State"], state["Failed"] = "dead", True
                alloc["ClientStatus"], alloc["ClientDescription"] = "failed", "Failed tasks"
                alloc["ModifyIndex"] = self._next_index()
            self._refresh_job_status(namespace, job_id)

    def set_alloc_status(self, job_id: str, client_status: str, desired_status: str = "run",
                         namespace: str = "default") -> None:
        """Force the newest allocation of a job into a given state (lost, unknown, evict...)."""
        with self._lock:
            alloc = max(self._allocs_of(namespace, job_id), key=lambda a: a["CreateIndex"])
            alloc["ClientStatus"] = client_status
            alloc["DesiredStatus"] = desired_status
            alloc["ModifyIndex"] = self._next_index()
            alloc["ModifyTime"] = _now_ns()

    def reschedule(self, job_id: str, namespace: str = "default") -> None:
        """The node of the job's allocation is lost; Nomad places a replacement allocation."""
        with self._lock:
            for alloc in self._allocs_of(namespace, job_id):
                if alloc["ClientStatus"] in ("pending", "running"):
                    alloc["ClientStatus"] = "lost"
                    alloc["DesiredStatus"] = "stop"
                    alloc["ClientDescription"] = "alloc is lost since its node is down"
                    alloc["ModifyIndex"] = self._next_index()
            self._place(self.jobs[(namespace, job_id)], str(uuid.uuid4()))

    def task_env(self, job_id: str, namespace: str = "default") -> dict | None:
        """The env the task of the job's newest allocation got from its template (None: no
        allocation, or the variable was missing when the client rendered it)."""
        with self._lock:
            allocs = self._allocs_of(namespace, job_id)
            if not allocs:
                return None
            return self.rendered_env.get(max(allocs, key=lambda a: a["CreateIndex"])["ID"])

    def variable(self, path: str, namespace: str = "default") -> dict | None:
        with self._lock:
            return self.variables.get((namespace, path))

    def dispatch_requests(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.path.endswith("/dispatch")]

    # --- request handling -------------------------------------------------------------------------
    def _handle(self, handler: BaseHTTPRequestHandler, method: str) -> None:
        split = urlsplit(handler.path)
        path = unquote(split.path)  # Go's URL.Path is decoded: %2F and / are the same to Nomad
        query = parse_qs(split.query, keep_blank_values=True)
        length = int(handler.headers.get("Content-Length") or 0)
        raw_body = handler.rfile.read(length) if length else b""
        try:
            body = json.loads(raw_body) if raw_body else None
        except ValueError:
            body = raw_body.decode(errors="replace")
        with self._lock:
            self.requests.append(RecordedRequest(method, path, query, body, dict(handler.headers)))
        if self.delay:
            time.sleep(self.delay)
        status, payload = self._respond(method, path, query, body, handler.headers)
        if isinstance(payload, (dict, list)):
            data, content_type = json.dumps(payload).encode(), "application/json"
        else:
            data, content_type = str(payload).encode(), "text/plain; charset=utf-8"
        try:
            handler.send_response(status)
            handler.send_header("Content-Type", content_type)
            handler.send_header("Content-Length", str(len(data)))
            handler.send_header("X-Nomad-Index", str(self._index))
            handler.end_headers()
            handler.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            return  # the client gave up (timeout tests): nothing left to answer

    def _respond(self, method, path, query, body, headers):
        with self._lock:
            fault = self._take_fault(method, path)
            if fault is not None:
                return fault.status, fault.body
            if self.acl_token is not None and headers.get("X-Nomad-Token") != self.acl_token:
                return 403, "Permission denied"
            namespace = (query.get("namespace") or ["default"])[0] or "default"
            try:
                return self._route(method, path, query, body, namespace)
            except HTTPError as exc:
                return exc.status, exc.message
            except ValueError as exc:
                return 400, str(exc)

    def _take_fault(self, method, path) -> Fault | None:
        for fault in self._faults:
            if fault.method and fault.method != method:
                continue
            if fault.path_prefix and not path.startswith(fault.path_prefix):
                continue
            fault.remaining -= 1
            if fault.remaining <= 0:
                self._faults.remove(fault)
            return fault
        return None

    def _route(self, method, path, query, body, namespace):
        if path == "/v1/jobs":
            if method == "GET":
                return 200, self._list_jobs(query, namespace)
            raise HTTPError(405, "Invalid method")
        if path == "/v1/allocations":
            if method == "GET":
                return 200, self._list_allocs(query, namespace)
            raise HTTPError(405, "Invalid method")
        if path == "/v1/vars":
            if method == "GET":
                prefix = (query.get("prefix") or [""])[0]
                return 200, [{k: v for k, v in var.items() if k != "Items"}
                             for (ns, p), var in sorted(self.variables.items())
                             if ns == namespace and p.startswith(prefix)]
            raise HTTPError(405, "Invalid method")
        if path.startswith("/v1/var/"):
            return self._variable(method, path[len("/v1/var/"):], query, body, namespace)
        if path.startswith("/v1/job/"):
            rest = path[len("/v1/job/"):]
            # Nomad's jobSpecificRequest: known suffixes first, the rest is the job id.
            if rest.endswith("/dispatch"):
                if method not in ("PUT", "POST"):
                    raise HTTPError(405, "Invalid method")
                return 200, self._dispatch(rest[: -len("/dispatch")], query, body or {}, namespace)
            if rest.endswith("/allocations"):
                job_id = rest[: -len("/allocations")]
                return 200, [self._alloc_stub(a, True) for a in self._allocs_of(namespace, job_id)]
            if method == "GET":
                return 200, self._get_job(rest, namespace)
            if method == "DELETE":
                return 200, self._deregister(rest, query, namespace)
            raise HTTPError(405, "Invalid method")
        raise HTTPError(404, "Invalid URL")

    # --- endpoints --------------------------------------------------------------------------------
    def _list_jobs(self, query, namespace):
        if query.get("filter"):
            raise HTTPError(400, "the fake does not evaluate filters on /v1/jobs")
        prefix = (query.get("prefix") or [""])[0]
        with_meta = _go_bool((query.get("meta") or [None])[0])
        stubs = []
        for (ns, job_id), job in sorted(self.jobs.items(), key=lambda kv: kv[0][1]):
            if ns != namespace or not job_id.startswith(prefix):
                continue
            stub = {
                "ID": job["ID"], "ParentID": job["ParentID"], "Name": job["Name"],
                "Namespace": ns, "Datacenters": job["Datacenters"], "Type": job["Type"],
                "Priority": job["Priority"], "Periodic": False,
                "ParameterizedJob": job["ParameterizedJob"] is not None, "Stop": job["Stop"],
                "Status": job["Status"], "StatusDescription": job["StatusDescription"],
                "JobSummary": self._summary(ns, job_id), "CreateIndex": job["CreateIndex"],
                "ModifyIndex": job["ModifyIndex"], "JobModifyIndex": job["JobModifyIndex"],
                "SubmitTime": job["SubmitTime"],
            }
            if with_meta and self.list_meta_supported:
                stub["Meta"] = dict(job["Meta"])
            stubs.append(stub)
        return stubs

    def _get_job(self, job_id, namespace):
        job = self.jobs.get((namespace, job_id))
        if job is None:
            raise HTTPError(404, "job not found")
        return dict(job)

    def _dispatch(self, parent_id, query, body, namespace):
        parent = self.jobs.get((namespace, parent_id))
        if parent is None:
            raise HTTPError(404, "parameterized job not found")
        if parent["ParameterizedJob"] is None:
            raise HTTPError(400, "Specified job is not a parameterized job")
        if parent["Stop"]:
            raise HTTPError(400, "Parameterized job is stopped")
        meta = body.get("Meta") or {}
        spec = parent["ParameterizedJob"]
        missing = [k for k in spec["MetaRequired"] if k not in meta]
        if missing:
            raise HTTPError(400, f"Dispatch did not provide required meta keys: {missing}")
        allowed = set(spec["MetaRequired"]) | set(spec["MetaOptional"])
        unpermitted = sorted(k for k in meta if k not in allowed)
        if unpermitted:
            raise HTTPError(400, f"Dispatch request included unpermitted metadata keys: {unpermitted}")
        if body.get("Payload") and spec["Payload"] == "forbidden":
            raise HTTPError(400, "Payload is not allowed")
        token = (query.get("idempotency_token") or [""])[0]
        if token:
            for (ns, _), existing in self.jobs.items():
                if (ns == namespace and existing["ParentID"] == parent_id
                        and existing["DispatchIdempotencyToken"] == token):
                    return {"Index": existing["ModifyIndex"], "JobCreateIndex": existing["CreateIndex"],
                            "EvalCreateIndex": 0, "EvalID": "", "DispatchedJobID": existing["ID"],
                            "LastIndex": 0, "RequestTime": 0}
        template = body.get("IdPrefixTemplate") or ""
        suffix = f"{int(time.time())}-{uuid.uuid4().hex[:8]}"
        child_id = f"{parent_id}/dispatch-{template}-{suffix}" if template else f"{parent_id}/dispatch-{suffix}"
        index = self._next_index()
        child = json.loads(json.dumps(parent))
        child.update({
            "ID": child_id, "Name": child_id, "ParentID": parent_id, "Dispatched": True,
            "ParameterizedJob": None, "Meta": {**parent["Meta"], **meta}, "Status": "pending",
            "SubmitTime": _now_ns(), "CreateIndex": index, "ModifyIndex": index,
            "JobModifyIndex": index, "DispatchIdempotencyToken": token, "Payload": body.get("Payload"),
        })
        self.jobs[(namespace, child_id)] = child
        eval_id = str(uuid.uuid4())
        if self.auto_place:
            self._place(child, eval_id)
        return {"Index": index, "JobCreateIndex": index, "EvalCreateIndex": index, "EvalID": eval_id,
                "DispatchedJobID": child_id, "LastIndex": 0, "RequestTime": 0}

    def _deregister(self, job_id, query, namespace):
        job = self.jobs.get((namespace, job_id))
        if job is None:
            raise HTTPError(404, "job not found")
        purge = _go_bool((query.get("purge") or [None])[0])
        index = self._next_index()
        for alloc in self._allocs_of(namespace, job_id):
            alloc["DesiredStatus"] = "stop"
            alloc["DesiredDescription"] = "alloc not needed due to job update"
            if alloc["ClientStatus"] in ("pending", "running", "unknown"):
                self._terminate(alloc, self.stop_exit_code, killed=True)
        if purge:
            del self.jobs[(namespace, job_id)]
            for alloc in self._allocs_of(namespace, job_id):
                del self.allocs[alloc["ID"]]
        else:
            job["Stop"] = True
            job["ModifyIndex"] = job["JobModifyIndex"] = index
            self._refresh_job_status(namespace, job_id)
        return {"EvalID": str(uuid.uuid4()), "EvalCreateIndex": index, "JobModifyIndex": index,
                "VolumeEvalID": "", "VolumeEvalIndex": 0, "Index": index, "LastIndex": 0,
                "RequestTime": 0}

    def _list_allocs(self, query, namespace):
        expression = (query.get("filter") or [""])[0]
        matcher = None
        if expression:
            match = re.fullmatch(r'\s*JobID\s+matches\s+"((?:[^"\\]|\\.)*)"\s*', expression)
            if not match:
                raise HTTPError(400, f"failed to parse filter expression {expression!r} (fake supports "
                                     f"JobID matches \"<regex>\" only)")
            matcher = re.compile(match.group(1))
        prefix = (query.get("prefix") or [""])[0]
        task_states = (query.get("task_states") or [None])[0]
        with_states = True if task_states in (None, "") else _go_bool(task_states)
        return [self._alloc_stub(a, with_states)
                for a in sorted(self.allocs.values(), key=lambda a: a["CreateIndex"])
                if a["Namespace"] == namespace and a["ID"].startswith(prefix)
                and (matcher is None or matcher.search(a["JobID"]))]

    def _variable(self, method, var_path, query, body, namespace):
        key = (namespace, var_path)
        current = self.variables.get(key)
        raw_cas = (query.get("cas") or [None])[0]
        if raw_cas not in (None, "") and int(raw_cas) != (current["ModifyIndex"] if current else 0):
            return 409, dict(current) if current else {}
        if method == "GET":
            if current is None:
                raise HTTPError(404, "variable not found")
            return 200, dict(current)
        if method == "PUT":
            items = (body or {}).get("Items") if isinstance(body, dict) else None
            if not items or not all(isinstance(v, str) for v in items.values()):
                raise HTTPError(400, "variable missing required Items object")
            index, now = self._next_index(), _now_ns()
            variable = {"Namespace": namespace, "Path": var_path, "Items": dict(items),
                        "CreateIndex": current["CreateIndex"] if current else index, "ModifyIndex": index,
                        "CreateTime": current["CreateTime"] if current else now, "ModifyTime": now}
            self.variables[key] = variable
            return 200, dict(variable)
        if method == "DELETE":
            self.variables.pop(key, None)
            return 200, ""
        raise HTTPError(405, "Invalid method")

    # --- the simulated scheduler and client -------------------------------------------------------
    def _place(self, job: dict, eval_id: str) -> None:
        now, index = _now_ns(), self._next_index()
        alloc_id = str(uuid.uuid4())
        alloc = {
            "ID": alloc_id, "EvalID": eval_id, "Name": f"{job['ID']}.bot[0]",
            "Namespace": job["Namespace"], "NodeID": "f7476465-4d6e-c0de-26d0-e383c49be941",
            "NodeName": "client-1", "JobID": job["ID"], "JobType": "batch", "JobVersion": 0,
            "TaskGroup": "bot", "DesiredStatus": "run", "DesiredDescription": "",
            "ClientStatus": "pending", "ClientDescription": "No tasks have started",
            "TaskStates": {"bot": {"State": "pending", "Failed": False, "Restarts": 0,
                                   "LastRestart": None, "StartedAt": None, "FinishedAt": None,
                                   "Events": [self._event("Received", "Task received by client")]}},
            "FollowupEvalID": "", "RescheduleTracker": None, "PreemptedAllocations": None,
            "PreemptedByAllocation": "", "CreateIndex": index, "ModifyIndex": index,
            "CreateTime": now, "ModifyTime": now,
        }
        self.allocs[alloc_id] = alloc
        var_path = (job.get("Meta") or {}).get("BOT_CONFIG_VAR")
        variable = self.variables.get((job["Namespace"], var_path)) if var_path else None
        if variable is not None:
            # template { data = "BOT_CONFIG='{{ with nomadVar ... }}{{ .BOT_CONFIG.Value }}{{ end }}'" env = true }
            self.rendered_env[alloc_id] = {"BOT_CONFIG": variable["Items"].get("BOT_CONFIG")}
        if self.auto_run:
            state = alloc["TaskStates"]["bot"]
            state["Events"] += [self._event("Task Setup", "Building Task Directory"),
                                self._event("Started", "Task started by client")]
            state["State"] = "running"
            state["StartedAt"] = time.strftime("%Y-%m-%dT%H:%M:%S.000000000Z", time.gmtime())
            alloc["ClientStatus"] = "running"
            alloc["ClientDescription"] = "Tasks are running"
        self._refresh_job_status(job["Namespace"], job["ID"])

    def _terminate(self, alloc: dict, exit_code: int, *, killed: bool) -> None:
        state = alloc["TaskStates"]["bot"]
        if killed:
            state["Events"].append(self._event("Killing", "Sent interrupt. Waiting 10s before force killing"))
        state["Events"].append(self._event("Terminated", f"Exit Code: {exit_code}", exit_code=exit_code))
        if killed:
            state["Events"].append(self._event("Killed", "Task successfully killed"))
        failed = exit_code != 0 and not killed
        if failed:
            state["Events"].append(self._event("Not Restarting", "Error was unrecoverable", fails_task=True))
        state["State"] = "dead"
        state["Failed"] = failed
        state["FinishedAt"] = time.strftime("%Y-%m-%dT%H:%M:%S.000000000Z", time.gmtime())
        alloc["ClientStatus"] = "failed" if failed else "complete"
        alloc["ClientDescription"] = "Failed tasks" if failed else "All tasks have completed"
        alloc["ModifyIndex"] = self._next_index()
        alloc["ModifyTime"] = _now_ns()

    def _refresh_job_status(self, namespace: str, job_id: str) -> None:
        job = self.jobs.get((namespace, job_id))
        if job is None:
            return
        allocs = self._allocs_of(namespace, job_id)
        if any(a["ClientStatus"] in ("pending", "running", "unknown") for a in allocs):
            job["Status"] = "running"
        elif allocs or job["Stop"]:
            job["Status"] = "dead"
        else:
            job["Status"] = "pending"

    def _summary(self, namespace: str, job_id: str) -> dict:
        counts = {"Queued": 0, "Complete": 0, "Failed": 0, "Running": 0, "Starting": 0, "Lost": 0,
                  "Unknown": 0}
        names = {"pending": "Starting", "running": "Running", "complete": "Complete",
                 "failed": "Failed", "lost": "Lost", "unknown": "Unknown"}
        for alloc in self._allocs_of(namespace, job_id):
            counts[names.get(alloc["ClientStatus"], "Unknown")] += 1
        return {"JobID": job_id, "Namespace": namespace, "Summary": {"bot": counts},
                "Children": {"Pending": 0, "Running": 0, "Dead": 0}}

    def _allocs_of(self, namespace: str, job_id: str) -> list[dict]:
        return [a for a in self.allocs.values() if a["Namespace"] == namespace and a["JobID"] == job_id]

    def _alloc_stub(self, alloc: dict, with_states: bool) -> dict:
        stub = json.loads(json.dumps(alloc))
        if not with_states:
            stub["TaskStates"] = None
        return stub

    def _event(self, kind: str, message: str, *, exit_code: int = 0, fails_task: bool = False) -> dict:
        details = {}
        if kind == "Terminated":
            details = {"exit_code": str(exit_code), "signal": "0", "oom_killed": "false"}
        return {"Type": kind, "Time": _now_ns(), "Message": "", "DisplayMessage": message,
                "Details": details, "FailsTask": fails_task, "ExitCode": exit_code, "Signal": 0,
                "KillTimeout": 0, "KillError": "", "KillReason": "", "RestartReason": "",
                "SetupError": "", "DriverError": "", "DriverMessage": ""}

    def _next_index(self) -> int:
        self._index += 1
        return self._index
