"""Nomad backend: every bot is one dispatch of a parameterized batch job (NOMAD_BOT_JOB).

Why dispatch rather than registering a batch job per bot:
- the operator owns the task definition (driver, image, resources, networks, constraints, secrets,
  `kill_timeout`) in their own job file, as Nomad intends; botmanager only supplies the per-bot
  values. A register-per-bot design would have to generate the whole job spec from settings.
- the dispatch endpoint has an idempotency token: a retried start (worker crash between the HTTP
  call and recording the id) returns the already dispatched job instead of a second bot.
- all bots of a deployment are children of one job, so one `GET /v1/jobs?prefix=` finds them.

The dispatched job id (`<NOMAD_BOT_JOB>/dispatch-...`) is the container id. BOT_CONFIG (the Redis
credentials, the meeting token, the session uid) never rides in the job: Meta and the dispatch
payload are both returned by `GET /v1/job/<id>` to any token that may read jobs. It is written to a
Nomad Variable of its own, `<NOMAD_BOT_VAR_PREFIX>/<deployment>/<bot name>` (item `BOT_CONFIG`),
readable only with a `variables` capability, before the dispatch; the job's `template` block reads
it (`nomadVar`) into the task's env. Dispatch Meta carries `BOT_CONFIG_VAR` (that path), `BOT_NAME`
and `BOT_LABELS` (JSON of the bot's labels, deployment label included), so the parameterized job
must declare `meta_required = ["BOT_CONFIG_VAR", "BOT_NAME", "BOT_LABELS"]`. `remove` deletes the
variable with the job; nothing else does (a stopped bot's variable stays until it is removed).

Calls: config = `PUT /v1/var/<path>?cas=0` (create only: never overwrite a variable that is not
this session's; a retried start updates its own with `cas=<its ModifyIndex>`); dispatch = `POST /v1/job/<job>/dispatch?idempotency_token=<session uid>` (python-nomad puts
the token in the body, where Nomad ignores it); stop = `DELETE /v1/job/<id>` (the job and its
allocations stay readable until Nomad's GC, so the sweep still sees the exit code); remove =
`DELETE /v1/var/<path>` then `DELETE /v1/job/<id>?purge=true`; list = `GET /v1/jobs?prefix=<job>&meta=true` plus
`GET /v1/allocations?filter=JobID matches "^<job>/dispatch-"` (two calls for all bots); inspect =
`GET /v1/job/<id>` plus `GET /v1/job/<id>/allocations`. A 404 on stop/remove means already gone.
Needs Nomad >= 1.6 (`meta` on the job list). The grace period of a stop is the task's
`kill_timeout` in the job file (Nomad takes no per-call timeout).

Status of a bot = its newest allocation (a rescheduled bot has several):

| client status | desired run | desired stop / evict |
|---|---|---|
| pending  | Starting | Stopping |
| running  | Up       | Stopping |
| unknown  | Up       | Stopping |   (client disconnected: last known running, never gone)
| complete | Exited   | Exited   |
| failed   | Exited when the task reported an exit code, else Failed (it never ran: driver, image) |
| lost     | Failed   | Failed   |   (its node died; Nomad may place a replacement, then that one counts)
| (other)  | Starting | Stopping |   (never reported as gone)

As on the other backends (one vocabulary for `GET /bots/status` whatever runs the bots): Exited = the bot ended and its
exit code (`exit_code`, 0 or not) is known; Failed = it never ran or was lost without one.

A dispatched job with no allocation yet: job status `pending` → Requested, `running` → Starting,
`dead` → Exited when it was stopped before being placed, else Failed.
Decision record: docs/decisions/0006-bots-dispatched-from-one-nomad-job.md.
"""
from __future__ import annotations

import hashlib
import json
import logging
import re
import uuid
from datetime import datetime, timezone

import nomad.api
import nomad.api.exceptions
import requests

from orchestrators.base import (LABEL_DEPLOYMENT, LABEL_MANAGED, LABEL_SESSION_UID, BotInfo, BotSpec,
                                NormalizedStatus, NotOurBotError, OrchestratorError, is_ours)

log = logging.getLogger(__name__)

META_CONFIG_VAR = "BOT_CONFIG_VAR"
META_NAME = "BOT_NAME"
META_LABELS = "BOT_LABELS"
VAR_ITEM = "BOT_CONFIG"  # the item of the bot's variable that holds its BOT_CONFIG

# Nomad Variable paths: letters, digits, '-', '_', '~' and '/' (segments not empty).
_VAR_PATH = re.compile(r"^[A-Za-z0-9_~\-]+(/[A-Za-z0-9_~\-]+)*$")

# The job name goes unescaped into a filter expression and a URL path: keep it to plain characters.
_JOB_NAME = re.compile(r"^[A-Za-z0-9_.\-]+$")

_ALLOC_STATUS: dict[tuple[str, bool], NormalizedStatus] = {
    # (client status, stop desired) -> normalized; terminal ones are handled in alloc_status().
    ("pending", False): NormalizedStatus.STARTING,
    ("pending", True): NormalizedStatus.STOPPING,
    ("running", False): NormalizedStatus.UP,
    ("running", True): NormalizedStatus.STOPPING,
    ("unknown", False): NormalizedStatus.UP,
    ("unknown", True): NormalizedStatus.STOPPING,
}


def alloc_status(client_status: str, desired_status: str, exit_code: int | None) -> NormalizedStatus:
    """The normalized status of an allocation, as documented in the module table."""
    client_status = (client_status or "").lower()
    stop_desired = (desired_status or "").lower() in ("stop", "evict")
    if client_status == "complete":
        return NormalizedStatus.EXITED
    if client_status == "failed":
        return NormalizedStatus.FAILED if exit_code is None else NormalizedStatus.EXITED
    if client_status == "lost":
        return NormalizedStatus.FAILED
    status = _ALLOC_STATUS.get((client_status, stop_desired))
    if status is None:
        log.warning("nomad: unknown allocation client status %r, not reported as gone", client_status)
        return NormalizedStatus.STOPPING if stop_desired else NormalizedStatus.STARTING
    return status


def job_status_without_alloc(job_status: str, stopped: bool) -> NormalizedStatus:
    job_status = (job_status or "").lower()
    if job_status == "pending":
        return NormalizedStatus.REQUESTED
    if job_status == "dead":
        return NormalizedStatus.EXITED if stopped else NormalizedStatus.FAILED
    return NormalizedStatus.STARTING


def task_exit_code(alloc: dict) -> int | None:
    """The exit code of the allocation's tasks: the last `Terminated` event of each task; a
    non-zero one wins (the bot failed even if a sidecar exited cleanly)."""
    codes = []
    for state in (alloc.get("TaskStates") or {}).values():
        terminated = [e for e in (state or {}).get("Events") or [] if e.get("Type") == "Terminated"]
        if terminated:
            codes.append(int(terminated[-1].get("ExitCode") or 0))
    if not codes:
        return None
    failing = [c for c in codes if c != 0]
    return failing[0] if failing else 0


def _from_ns(value) -> datetime | None:
    if not value:
        return None
    return datetime.fromtimestamp(int(value) / 1e9, tz=timezone.utc)


class NomadOrchestrator:
    name = "nomad"

    def __init__(self, *, address: str, job: str, deployment: str, token: str = "",
                 namespace: str = "", timeout: float = 30, query_timeout: float | None = None,
                 verify: bool = True, var_prefix: str = "botmanager/bots"):
        if not _JOB_NAME.match(job or ""):
            raise ValueError(f"NOMAD_BOT_JOB {job!r} must be letters, digits, '_', '.' or '-'.")
        if not deployment:
            raise ValueError("NomadOrchestrator needs a deployment name (DEPLOYMENT_NAME).")
        self.var_root = f"{var_prefix.strip('/')}/{deployment}"
        if not _VAR_PATH.match(self.var_root):
            raise ValueError(
                f"NOMAD_BOT_VAR_PREFIX/DEPLOYMENT_NAME {self.var_root!r} is not a Nomad variable path "
                f"(letters, digits, '-', '_', '~', '/').")
        self.address = address.rstrip("/")
        self.job = job
        self.deployment = deployment
        self.namespace = namespace or None
        # The requesters are built directly rather than through nomad.Nomad(), which reads
        # NOMAD_* variables from the environment behind the settings' back.
        requester = {
            "address": self.address,
            "token": token or None,
            "namespace": self.namespace,
            "timeout": timeout,
            "verify": verify,
            "session": requests.Session(),
        }
        # Dispatch and purge get `timeout`; what the sweep, finalizers and request paths call
        # (list, inspect, stop) gets the short `query_timeout`, so a slow API never holds them.
        self._dispatcher = nomad.api.Job(**requester)
        self._variables = nomad.api.Variable(**requester)
        quick = {**requester, "timeout": query_timeout or timeout}
        self._job = nomad.api.Job(**quick)
        self._jobs = nomad.api.Jobs(**quick)
        self._allocations = nomad.api.Allocations(**quick)

    @classmethod
    def from_settings(cls, settings) -> "NomadOrchestrator":
        return cls(
            address=settings.NOMAD_ADDR,
            job=settings.NOMAD_BOT_JOB,
            deployment=settings.DEPLOYMENT_NAME,
            token=settings.NOMAD_TOKEN,
            namespace=settings.NOMAD_NAMESPACE,
            timeout=settings.ORCHESTRATOR_TIMEOUT_SECONDS,
            query_timeout=settings.ORCHESTRATOR_QUERY_TIMEOUT_SECONDS,
            var_prefix=settings.NOMAD_BOT_VAR_PREFIX,
        )

    def instance_id(self) -> str:
        # Nomad schedules across its cluster: every worker that talks to it sees every bot.
        return f"nomad:{self.address}/{self.namespace or 'default'}"

    # --- helpers ----------------------------------------------------------------------------------
    @property
    def _dispatch_prefix(self) -> str:
        return f"{self.job}/dispatch-"

    def _where(self) -> str:
        return f"Nomad at {self.address} (namespace {self.namespace or 'default'})"

    def _is_ours(self, container_id: str) -> bool:
        # Never send a DELETE for anything but a dispatched child of our job: deregistering the
        # parameterized job itself would stop every bot of the deployment.
        return container_id.startswith(self._dispatch_prefix) and len(container_id) > len(self._dispatch_prefix)

    def _labels_of(self, meta: dict | None) -> dict[str, str] | None:
        """The bot's labels from job meta, or None when the job is not a bot of this deployment."""
        raw = (meta or {}).get(META_LABELS)
        if not raw:
            return None
        try:
            labels = json.loads(raw)
        except ValueError:
            log.warning("nomad: job meta %s is not JSON: %r", META_LABELS, raw[:200])
            return None
        if not isinstance(labels, dict):
            return None
        if not is_ours(labels, self.deployment):
            return None
        return {str(k): str(v) for k, v in labels.items()}

    def _info(self, job: dict, labels: dict[str, str], allocs: list[dict]) -> BotInfo:
        newest = max(allocs, key=lambda a: (a.get("CreateIndex") or 0, a.get("CreateTime") or 0), default=None)
        meta = job.get("Meta") or {}
        if newest is None:
            raw = f"job:{job.get('Status') or ''}"
            status = job_status_without_alloc(job.get("Status"), bool(job.get("Stop")))
            exit_code = None
        else:
            client_status = newest.get("ClientStatus") or ""
            desired = newest.get("DesiredStatus") or ""
            raw = f"{client_status}/{desired}"
            exit_code = task_exit_code(newest) if client_status in ("complete", "failed") else None
            status = alloc_status(client_status, desired, exit_code)
        created = _from_ns(job.get("SubmitTime")) or (_from_ns(newest.get("CreateTime")) if newest else None)
        return BotInfo(
            container_id=job["ID"],
            name=meta.get(META_NAME) or job["ID"],
            status=status,
            raw_status=raw,
            labels=labels,
            created_at=created,
            exit_code=exit_code,
        )

    # --- interface --------------------------------------------------------------------------------
    def start(self, spec: BotSpec) -> str:
        labels = {str(k): str(v) for k, v in spec.labels.items()}
        labels[LABEL_MANAGED] = "true"
        labels[LABEL_DEPLOYMENT] = self.deployment
        var_path = self._var_path(spec.name)
        self._put_config(var_path, spec.config)
        body = {
            "Meta": {
                META_CONFIG_VAR: var_path,
                META_NAME: spec.name,
                META_LABELS: json.dumps(labels, sort_keys=True),
            },
            # Readable ids in the Nomad UI: <job>/dispatch-<bot name>-<time>-<random>.
            "IdPrefixTemplate": spec.name,
        }
        # One bot per session: a retried start of the same session gets the same job back. The
        # label is already the session's digest (never the uid: the job shows its Meta and its
        # token to every job-read token); hashing it again keeps a hand-made label out of it too.
        session = labels.get(LABEL_SESSION_UID)
        token = hashlib.sha256(f"botmanager-dispatch:{session}".encode()).hexdigest() if session else str(uuid.uuid4())
        try:
            response = self._dispatcher.request(self.job, "dispatch", method="post", json=body,
                                         params={"idempotency_token": token}).json()
        except nomad.api.exceptions.URLNotFoundNomadException as exc:
            self._delete_config(var_path)
            raise OrchestratorError(
                f"{self._where()} has no parameterized job {self.job!r} to dispatch: register the "
                f"bot job (see docs/orchestrators.md, nomad) or set NOMAD_BOT_JOB. {exc}") from exc
        except nomad.api.exceptions.BadRequestNomadException as exc:
            self._delete_config(var_path)
            raise OrchestratorError(
                f"{self._where()} refused to dispatch {self.job!r} (does the job declare "
                f"meta_required {META_CONFIG_VAR}, {META_NAME}, {META_LABELS}?): {exc}") from exc
        except (nomad.api.exceptions.BaseNomadException, requests.RequestException, ValueError) as exc:
            # Not deleted: the dispatch may have gone through (timeout), and its bot needs the
            # variable; a retried start reuses it, remove() of the bot deletes it.
            raise OrchestratorError(f"{self._where()} could not dispatch {self.job!r}: {exc}") from exc
        job_id = response.get("DispatchedJobID")
        if not job_id:
            raise OrchestratorError(f"{self._where()} answered a dispatch without DispatchedJobID: {response!r}")
        return job_id

    # --- the bot's secret, in a Nomad Variable --------------------------------------------------
    def _var_path(self, bot_name: str) -> str:
        path = f"{self.var_root}/{bot_name}"
        if not _VAR_PATH.match(path):
            raise OrchestratorError(f"bot name {bot_name!r} does not make a Nomad variable path")
        return path

    def _is_our_var(self, path: str | None) -> bool:
        # A forged Meta must not make remove() delete someone else's variable.
        return bool(path) and path.startswith(self.var_root + "/") and bool(_VAR_PATH.match(path))

    def _put_config(self, path: str, config: dict) -> None:
        """Create the bot's variable; only a retried start of the same bot (same name: same session)
        finds it already there, and updates it at the index it read (check-and-set)."""
        # A single-quoted value in the job's env template is taken literally; a quote inside a JSON
        # string is escaped as \u0027 so the value can hold no single quote (docs/orchestrators.md, nomad).
        text = json.dumps(config).replace("'", "\\u0027")
        payload = {"Namespace": self.namespace or "default", "Path": path, "Items": {VAR_ITEM: text}}
        try:
            try:
                self._variables.create_variable(path, payload, namespace=self.namespace, cas=0)
            except nomad.api.exceptions.VariableConflict as conflict:
                current = conflict.nomad_resp.json() if conflict.nomad_resp is not None else {}
                self._variables.create_variable(path, payload, namespace=self.namespace,
                                                cas=int(current.get("ModifyIndex") or 0))
        except (nomad.api.exceptions.BaseNomadException, requests.RequestException, ValueError) as exc:
            raise OrchestratorError(
                f"{self._where()} could not write the bot's variable {path} (the token needs the "
                f"`write` variables capability on {self.var_root}/*): {exc}") from exc

    def _delete_config(self, path: str) -> None:
        try:
            self._variables.delete_variable(path, namespace=self.namespace)
        except nomad.api.exceptions.URLNotFoundNomadException:
            return  # already gone
        except (nomad.api.exceptions.BaseNomadException, requests.RequestException) as exc:
            raise OrchestratorError(f"{self._where()} could not delete the bot's variable {path}: {exc}") from exc

    def terminate(self, container_id: str) -> None:
        # Nomad sends the task's kill_signal and escalates after its kill_timeout by itself.
        self._deregister(container_id, purge=False, verb="stop")

    def kill(self, container_id: str) -> None:
        # A second deregister is idempotent; Nomad's own kill_timeout escalation does the forcing
        # (its API has no "kill now" for a job).
        self._deregister(container_id, purge=False, verb="stop")

    def stop(self, container_id: str, timeout: float) -> None:
        # `timeout` is the job's kill_timeout in Nomad; see the module docstring.
        self._deregister(container_id, purge=False, verb="stop")

    def remove(self, container_id: str) -> None:
        self._deregister(container_id, purge=True, verb="remove")

    def _own(self, container_id: str, verb: str) -> dict | None:
        """The job when `container_id` is a dispatched bot of this deployment, None when Nomad has no
        such job; NotOurBotError for anything else (the parameterized job itself, another job,
        another deployment's dispatch of a shared job). One GET on the short query timeout."""
        if not self._is_ours(container_id):
            raise NotOurBotError(
                f"Refusing to {verb} {container_id!r}: not a dispatched bot of job {self.job!r}.")
        try:
            job = self._job.get_job(container_id)
        except nomad.api.exceptions.URLNotFoundNomadException:
            return None
        except (nomad.api.exceptions.BaseNomadException, requests.RequestException, ValueError) as exc:
            raise OrchestratorError(f"{self._where()} could not read {container_id}: {exc}") from exc
        if self._labels_of(job.get("Meta")) is None:
            raise NotOurBotError(
                f"Refusing to {verb} {container_id!r}: it is not a bot of deployment {self.deployment!r}.")
        return job

    def _deregister(self, container_id: str, *, purge: bool, verb: str) -> None:
        job = self._own(container_id, verb)
        if job is None:
            return  # already gone
        var_path = (job.get("Meta") or {}).get(META_CONFIG_VAR)
        if purge and self._is_our_var(var_path):
            # Before the purge: a purge that fails leaves the job, and the retried remove finds
            # the path again; the other order could leave the secret behind with no job naming it.
            self._delete_config(var_path)
        try:
            self._job.deregister_job(container_id, purge=True if purge else None)
        except nomad.api.exceptions.URLNotFoundNomadException:
            return  # already gone
        except (nomad.api.exceptions.BaseNomadException, requests.RequestException) as exc:
            raise OrchestratorError(f"{self._where()} could not {verb} {container_id}: {exc}") from exc

    def list(self) -> list[BotInfo]:
        try:
            jobs = self._jobs.get_jobs(prefix=self.job, meta=True)
        except (nomad.api.exceptions.BaseNomadException, requests.RequestException, ValueError) as exc:
            raise OrchestratorError(f"{self._where()} could not list jobs: {exc}") from exc
        if not isinstance(jobs, list):
            raise OrchestratorError(f"{self._where()} answered the job list with {type(jobs).__name__}")
        if not any(j.get("ID") == self.job for j in jobs):
            # Without the parent job, "no children" would read as "no bots": that is a
            # configuration error (wrong NOMAD_BOT_JOB or namespace), not an empty deployment.
            raise OrchestratorError(
                f"{self._where()} has no job {self.job!r}: register the parameterized bot job or "
                f"fix NOMAD_BOT_JOB / NOMAD_NAMESPACE.")
        bots: dict[str, tuple[dict, dict[str, str]]] = {}
        for job in jobs:
            if job.get("ParentID") != self.job:
                continue
            if "Meta" not in job:
                raise OrchestratorError(
                    f"{self._where()} returned the job list without Meta: botmanager needs Nomad >= 1.6.")
            labels = self._labels_of(job.get("Meta"))
            if labels is not None:
                bots[job["ID"]] = (job, labels)
        if not bots:
            return []
        try:
            allocs = self._allocations.get_allocations(filter_=f'JobID matches "^{self._dispatch_prefix}"')
        except (nomad.api.exceptions.BaseNomadException, requests.RequestException, ValueError) as exc:
            raise OrchestratorError(f"{self._where()} could not list allocations: {exc}") from exc
        by_job: dict[str, list[dict]] = {}
        for alloc in allocs:
            by_job.setdefault(alloc.get("JobID"), []).append(alloc)
        return [self._info(job, labels, by_job.get(job_id, [])) for job_id, (job, labels) in bots.items()]

    def inspect(self, container_id: str) -> BotInfo | None:
        if not self._is_ours(container_id):
            return None
        try:
            job = self._job.get_job(container_id)
            allocs = self._job.get_allocations(container_id)
        except nomad.api.exceptions.URLNotFoundNomadException:
            return None
        except (nomad.api.exceptions.BaseNomadException, requests.RequestException, ValueError) as exc:
            raise OrchestratorError(f"{self._where()} could not inspect {container_id}: {exc}") from exc
        labels = self._labels_of(job.get("Meta"))
        if labels is None:
            return None
        return self._info(job, labels, allocs)
