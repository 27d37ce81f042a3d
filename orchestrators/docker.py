"""Docker backend: one container per bot, on the engine at DOCKER_HOST (default: the local socket).

- start: `create` then `start` (never `containers.run`, which silently tries a registry pull when
  the image is missing); the container carries BOT_CONFIG in its env, our labels, the name the
  launcher chose, the DOCKER_NETWORK network, a memory limit (DOCKER_BOT_MEM_LIMIT), a pids limit
  (DOCKER_BOT_PIDS_LIMIT) and an optional CPU limit. A bot is an untrusted browser: it gets no
  Linux capability (`cap_drop=ALL`, DOCKER_BOT_CAP_ADD adds back what an image truly needs) and
  `no-new-privileges` (no setuid binary in the image can raise it again). No auto-remove: the
  sweep must be able to read the exit code of a bot that died, so exited containers stay until
  `remove()` is called for them.
- list: one `containers.list(all=True, filters={"label": ...}, sparse=True)` call (sparse: the
  non-sparse variant inspects every container, i.e. N+1 calls). The exit code comes from the
  list's `Status` text ("Exited (137) 2 seconds ago"), the only place the list endpoint has it.
- every engine error (engine down, timeout, API error) becomes OrchestratorError: the caller can
  tell "no bots" from "could not look".

Status mapping (engine `State` → normalized status):

| engine state | normalized | why |
|---|---|---|
| created    | Starting | exists, its process has not started yet |
| running    | Up       | |
| paused     | Up       | frozen, not gone: it resumes where it was |
| restarting | Starting | between two runs under a restart policy |
| removing   | Stopping | on its way out; it disappears on its own |
| exited     | Exited   | ended, cleanly or not: `exit_code` says which (0, 1, 137...) |
| dead       | Failed   | the engine could not stop or remove it cleanly |
| (other)    | Starting | an unknown state is never reported as gone |

As on the other backends (one vocabulary for `GET /bots/status` whatever runs the bots): Exited = the bot ended and its
exit code is known, whatever it is; Failed = it never ran, crashed without an exit code, or the
engine lost it. The manager judges success from the callbacks and `exit_code`, not from this.
"""
from __future__ import annotations

import json
import logging
import math
import re
import threading
from datetime import datetime, timezone

import docker.errors
import requests.exceptions

import docker
from orchestrators.base import (LABEL_DEPLOYMENT, LABEL_MANAGED, LABEL_PREFIX, LABEL_SESSION_UID, BotInfo,
                                BotSpec, NormalizedStatus, NotOurBotError, OrchestratorError, is_ours,
                                session_digest)

log = logging.getLogger(__name__)

DEFAULT_DOCKER_HOST = "unix:///var/run/docker.sock"

STATUS_MAP: dict[str, NormalizedStatus] = {
    "created": NormalizedStatus.STARTING,
    "running": NormalizedStatus.UP,
    "paused": NormalizedStatus.UP,
    "restarting": NormalizedStatus.STARTING,
    "removing": NormalizedStatus.STOPPING,
    "exited": NormalizedStatus.EXITED,
    "dead": NormalizedStatus.FAILED,
}

# `Status` of the list endpoint: "Exited (137) 5 seconds ago", "Restarting (3) 1 second ago".
_EXIT_CODE_IN_STATUS = re.compile(r"^(?:Exited|Restarting) \((-?\d+)\)")

# What the docker SDK lets escape besides its own DockerException: requests' connection and
# timeout errors are not wrapped by it.
_ENGINE_ERRORS = (docker.errors.DockerException, requests.exceptions.RequestException)


def normalize_status(state: str) -> NormalizedStatus:
    """The normalized status of an engine `State`, as documented in the module table."""
    state = (state or "").lower()
    status = STATUS_MAP.get(state)
    if status is None:
        log.warning("docker: unknown container state %r, reported as Starting", state)
        return NormalizedStatus.STARTING
    return status


def exit_code_from_status_text(text: str | None) -> int | None:
    match = _EXIT_CODE_IN_STATUS.match(text or "")
    return int(match.group(1)) if match else None


def own_labels(labels: dict) -> dict[str, str]:
    """The project's own labels (`botmanager.*`) of a container: the labels an image carries
    (`org.opencontainers.image.title` of a base image, a vendor's) are the image's business, not
    something to report as the bot's."""
    return {k: v for k, v in labels.items() if k.startswith(LABEL_PREFIX)}


def _parse_created(value) -> datetime | None:
    """`Created` is unix seconds in the list endpoint and RFC 3339 (nanoseconds) in inspect."""
    if value is None or value == "":
        return None
    if isinstance(value, (int, float)):
        return datetime.fromtimestamp(value, tz=timezone.utc)
    # Python parses at most microseconds: cut the fraction to 6 digits, keep the offset.
    match = re.match(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)?$", value)
    if not match:
        return None
    base, fraction, offset = match.groups()
    text = base + (f".{fraction[:6]}" if fraction else "") + (
        "+00:00" if offset in (None, "Z") else offset)
    return datetime.fromisoformat(text)


class DockerOrchestrator:
    name = "docker"

    def __init__(self, *, image: str, deployment: str, network: str = "", mem_limit: str = "",
                 nano_cpus: int = 0, pids_limit: int = 0, cap_add: list[str] | None = None, base_url: str = DEFAULT_DOCKER_HOST, timeout: float = 30,
                 query_timeout: float | None = None, client: docker.DockerClient | None = None):
        if not deployment:
            raise ValueError("DockerOrchestrator needs a deployment name (DEPLOYMENT_NAME).")
        self.image = image
        self.deployment = deployment
        self.network = network
        self.mem_limit = mem_limit
        self.nano_cpus = nano_cpus
        self.pids_limit = pids_limit
        self.cap_add = list(cap_add or [])
        self.base_url = base_url
        self.timeout = timeout
        self.query_timeout = query_timeout or timeout
        self._client = client
        self._query_client = client
        self._client_lock = threading.Lock()
        self._instance: str | None = None

    @classmethod
    def from_settings(cls, settings) -> "DockerOrchestrator":
        return cls(
            image=settings.BOT_IMAGE,
            deployment=settings.DEPLOYMENT_NAME,
            network=settings.DOCKER_NETWORK,
            mem_limit=settings.DOCKER_BOT_MEM_LIMIT,
            nano_cpus=settings.DOCKER_BOT_NANO_CPUS,
            pids_limit=settings.DOCKER_BOT_PIDS_LIMIT,
            cap_add=settings.DOCKER_BOT_CAP_ADD,
            base_url=settings.DOCKER_HOST or DEFAULT_DOCKER_HOST,
            timeout=settings.ORCHESTRATOR_TIMEOUT_SECONDS,
            query_timeout=settings.ORCHESTRATOR_QUERY_TIMEOUT_SECONDS,
        )

    # --- engine access ----------------------------------------------------------------------------
    @property
    def client(self) -> docker.DockerClient:
        """For create, start and remove (`timeout`). Created on first use: the SDK asks the engine
        for its API version when it is built, so building it eagerly would make an engine that is
        down at import time fail forever."""
        with self._client_lock:
            if self._client is None:
                self._client = self._connect(self.timeout)
            return self._client

    @property
    def query(self) -> docker.DockerClient:
        """For list, inspect and signals, with the short `query_timeout`: the sweep, the
        finalizers and the request paths call these, and a hung engine must not hold them."""
        with self._client_lock:
            if self._query_client is None:
                self._query_client = self._connect(self.query_timeout)
            return self._query_client

    def _connect(self, timeout: float) -> docker.DockerClient:
        try:
            return docker.DockerClient(base_url=self.base_url, version="auto", timeout=timeout)
        except _ENGINE_ERRORS as exc:
            raise OrchestratorError(f"Docker engine at {self.base_url} is not reachable: {exc}") from exc

    def instance_id(self) -> str:
        """`docker:<engine ID>`: two workers that reach one engine (whatever the address) see the
        same bots; two engines never do. Asked once per process."""
        if self._instance is None:
            try:
                self._instance = f"docker:{self.query.info()['ID']}"
            except (*_ENGINE_ERRORS, KeyError) as exc:
                raise OrchestratorError(f"Docker engine at {self.base_url} did not say its ID: {exc}") from exc
        return self._instance

    def _label_filters(self) -> list[str]:
        return [f"{LABEL_MANAGED}=true", f"{LABEL_DEPLOYMENT}={self.deployment}"]

    # --- interface --------------------------------------------------------------------------------
    def start(self, spec: BotSpec) -> str:
        # The backend, not the caller, owns the two labels list() filters on: a bot it starts is
        # always visible to this deployment and never to another one.
        labels = {str(k): str(v) for k, v in spec.labels.items()}
        labels[LABEL_MANAGED] = "true"
        labels[LABEL_DEPLOYMENT] = self.deployment
        options = {
            "image": self.image,
            "name": spec.name,
            "environment": {"BOT_CONFIG": json.dumps(spec.config)},
            "labels": labels,
            "detach": True,
            "auto_remove": False,
            "cap_drop": ["ALL"],
            "security_opt": ["no-new-privileges:true"],
        }
        if self.cap_add:
            options["cap_add"] = self.cap_add
        if self.pids_limit > 0:
            options["pids_limit"] = self.pids_limit
        if self.network:
            options["network"] = self.network
        if self.mem_limit:
            options["mem_limit"] = self.mem_limit
        if self.nano_cpus:
            options["nano_cpus"] = self.nano_cpus
        try:
            container = self.client.containers.create(**options)
        except docker.errors.ImageNotFound as exc:
            raise OrchestratorError(
                f"Bot image {self.image!r} is not present on the Docker engine (it is never pulled "
                f"implicitly): build it (docker build -f Dockerfile.simbot -t {self.image} .) or "
                f"pull it, or set BOT_IMAGE. Engine said: {exc.explanation}") from exc
        except docker.errors.APIError as exc:
            if exc.status_code == 409:
                return self._adopt_same_session(spec, labels, exc)
            raise OrchestratorError(f"Docker could not create bot {spec.name}: {exc.explanation or exc}") from exc
        except _ENGINE_ERRORS as exc:
            raise OrchestratorError(f"Docker could not create bot {spec.name}: {exc}") from exc
        try:
            container.start()
        except _ENGINE_ERRORS as exc:
            self._discard_unstarted(container.id)
            raise OrchestratorError(f"Docker could not start bot {spec.name}: {exc}") from exc
        return container.id

    def _adopt_same_session(self, spec: BotSpec, labels: dict[str, str], conflict) -> str:
        """A name conflict on create: when the existing container is this very session's bot (a
        retried start), it is the answer; anything else is a real conflict."""
        try:
            existing = self.client.containers.get(spec.name)
        except _ENGINE_ERRORS as exc:
            raise OrchestratorError(f"Docker name conflict for bot {spec.name}: {conflict}") from exc
        theirs = existing.labels or {}
        ours = labels.get(LABEL_SESSION_UID)  # this session's digest
        theirs_session = theirs.get(LABEL_SESSION_UID)
        # Same session: the same digest, or (a bot started before labels carried digests) the uid
        # whose digest ours is.
        same_session = ours is not None and theirs_session is not None \
            and ours in (theirs_session, session_digest(theirs_session))
        if same_session and theirs.get(LABEL_DEPLOYMENT) == self.deployment:
            if existing.status == "created":
                try:
                    existing.start()
                except _ENGINE_ERRORS as exc:
                    raise OrchestratorError(f"Docker could not start bot {spec.name}: {exc}") from exc
            return existing.id
        raise OrchestratorError(
            f"A container named {spec.name} already exists and belongs to another session or "
            f"deployment: {conflict.explanation or conflict}")

    def _discard_unstarted(self, container_id: str) -> None:
        """A container that was created but could not start must not linger as 'created' (which
        would read as Starting forever)."""
        try:
            self.client.api.remove_container(container_id, force=True)
        except docker.errors.NotFound:
            return
        except _ENGINE_ERRORS as exc:
            log.warning("docker: could not remove unstarted container %s: %s", container_id, exc)

    def _own(self, container_id: str, verb: str) -> str | None:
        """The full id of `container_id` when it is one of this deployment's bots, None when the
        engine has no such container; NotOurBotError for any other container (a task pushed into
        the broker could name any container on the engine). One inspect on the short query client;
        the order that follows names the full id, never a name that could be reassigned."""
        attrs = self._inspect(container_id)
        if attrs is None:
            return None
        if not is_ours((attrs.get("Config") or {}).get("Labels"), self.deployment):
            raise NotOurBotError(
                f"Refusing to {verb} container {container_id!r}: it is not a bot of deployment "
                f"{self.deployment!r}.")
        return attrs["Id"]

    def terminate(self, container_id: str) -> None:
        self._kill(container_id, "SIGTERM", "terminate")

    def kill(self, container_id: str) -> None:
        self._kill(container_id, "SIGKILL", "kill")

    def _kill(self, container_id: str, signal: str, verb: str) -> None:
        """`docker kill -s <signal>`: the engine delivers it and answers at once (a `docker stop`
        would hold the call until the container died)."""
        full_id = self._own(container_id, verb)
        if full_id is None:
            return  # already gone
        try:
            self.query.api.kill(full_id, signal=signal)
        except docker.errors.NotFound:
            return  # already gone
        except docker.errors.APIError as exc:
            if exc.status_code == 409:  # "is not running": nothing to signal
                return
            raise OrchestratorError(f"Docker could not signal {container_id}: {exc.explanation or exc}") from exc
        except _ENGINE_ERRORS as exc:
            raise OrchestratorError(f"Docker could not signal {container_id}: {exc}") from exc

    def stop(self, container_id: str, timeout: float) -> None:
        full_id = self._own(container_id, "stop")
        if full_id is None:
            return  # already gone: stopped
        # Docker takes whole seconds; rounding up never gives the bot less time than asked.
        seconds = max(0, math.ceil(timeout))
        try:
            # The SDK widens its HTTP timeout by `seconds` for this call on its own.
            self.client.api.stop(full_id, timeout=seconds)
        except docker.errors.NotFound:
            return  # already gone: stopped
        except _ENGINE_ERRORS as exc:
            raise OrchestratorError(f"Docker could not stop {container_id}: {exc}") from exc

    def list(self) -> list[BotInfo]:
        try:
            containers = self.query.containers.list(
                all=True, filters={"label": self._label_filters()}, sparse=True)
        except _ENGINE_ERRORS as exc:
            raise OrchestratorError(f"Docker could not list bots: {exc}") from exc
        return [self._from_list_entry(c.attrs) for c in containers]

    def _inspect(self, container_id: str) -> dict | None:
        """The engine's inspection of any container (None: no such container), on the short query
        client."""
        try:
            return self.query.api.inspect_container(container_id)
        except docker.errors.NotFound:
            return None
        except _ENGINE_ERRORS as exc:
            raise OrchestratorError(f"Docker could not inspect {container_id}: {exc}") from exc

    def inspect(self, container_id: str) -> BotInfo | None:
        attrs = self._inspect(container_id)
        if attrs is None:
            return None
        labels = (attrs.get("Config") or {}).get("Labels") or {}
        if not is_ours(labels, self.deployment):
            # Consistent with list(): another deployment's container does not exist for us.
            return None
        state = attrs.get("State") or {}
        raw = state.get("Status") or ""
        exit_code = state.get("ExitCode") if raw in ("exited", "dead") else None
        return BotInfo(
            container_id=attrs["Id"],
            name=(attrs.get("Name") or "").lstrip("/"),
            status=normalize_status(raw),
            raw_status=raw,
            labels=own_labels(labels),
            created_at=_parse_created(attrs.get("Created")),
            exit_code=exit_code,
        )

    def remove(self, container_id: str) -> None:
        full_id = self._own(container_id, "remove")
        if full_id is None:
            return
        try:
            # No force: remove() is for bots that have exited; a running one is refused (409).
            self.client.api.remove_container(full_id, force=False)
        except docker.errors.NotFound:
            return
        except docker.errors.APIError as exc:
            if exc.status_code == 409 and "already in progress" in str(exc.explanation or ""):
                return  # someone else is removing it: removed
            raise OrchestratorError(f"Docker could not remove {container_id}: {exc.explanation or exc}") from exc
        except _ENGINE_ERRORS as exc:
            raise OrchestratorError(f"Docker could not remove {container_id}: {exc}") from exc

    # --- helpers ----------------------------------------------------------------------------------
    def _from_list_entry(self, entry: dict) -> BotInfo:
        raw = entry.get("State") or ""
        if isinstance(raw, dict):  # very old engines put the inspect-style object here
            raw = raw.get("Status") or ""
        exit_code = exit_code_from_status_text(entry.get("Status")) if raw in ("exited", "dead") else None
        names = entry.get("Names") or []
        return BotInfo(
            container_id=entry["Id"],
            name=names[0].lstrip("/") if names else "",
            status=normalize_status(raw),
            raw_status=raw,
            labels=own_labels(entry.get("Labels") or {}),
            created_at=_parse_created(entry.get("Created")),
            exit_code=exit_code,
        )
