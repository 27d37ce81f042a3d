"""The orchestrator interface every backend implements, and the types it speaks.

A backend starts a bot from a `BotSpec`, asks it to stop (`terminate`), forces it (`kill`), lists
every bot of this deployment in one call, and inspects one. No call waits for a bot to die: the
escalation from terminate to kill is a countdown task (meetings/stopping/bot_control.py), so a bot that
ignores SIGTERM never holds a worker. Errors talking to the engine raise `OrchestratorError`: `list()` never answers
an empty list when it could not look, so reconciliation can tell "no bots" from "unknown".
"""
from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol, runtime_checkable

# Labels every bot carries. The deployment label keeps two deployments on one engine apart.
LABEL_PREFIX = "botmanager."  # every label of ours starts so; a backend reports only these
LABEL_MANAGED = "botmanager.managed"
LABEL_DEPLOYMENT = "botmanager.deployment"
LABEL_MEETING_ID = "botmanager.meeting_id"
LABEL_USER_ID = "botmanager.user_id"
# Holds `session_digest(uid)`, never the uid (a capability, while labels are readable by anyone
# who can list containers or read Nomad jobs). The name stays, so operators' filters keep working;
# bots started before the digest carry the plain uid here, and `labels_name_session` accepts both.
LABEL_SESSION_UID = "botmanager.session_uid"


class NormalizedStatus(str, enum.Enum):
    REQUESTED = "Requested"
    STARTING = "Starting"
    UP = "Up"
    STOPPING = "Stopping"
    EXITED = "Exited"
    FAILED = "Failed"

    @property
    def is_running(self) -> bool:
        """Could the bot still be doing something (so it must not be judged gone)?"""
        return self in (NormalizedStatus.REQUESTED, NormalizedStatus.STARTING, NormalizedStatus.UP,
                        NormalizedStatus.STOPPING)


class OrchestratorError(Exception):
    """The backend could not be reached or answered an error: the state is unknown."""


class NotOurBotError(OrchestratorError):
    """The id names something that exists but is not a bot of this deployment (no
    `botmanager.managed=true` and `botmanager.deployment=<DEPLOYMENT_NAME>`): `terminate`, `kill`,
    `stop` and `remove` refuse it. Only a forged or corrupted task asks for that, so callers log
    it and never retry (retrying cannot make it ours)."""


def is_ours(labels: dict | None, deployment: str) -> bool:
    """The one rule every backend applies before signalling or removing anything."""
    labels = labels or {}
    return labels.get(LABEL_MANAGED) == "true" and labels.get(LABEL_DEPLOYMENT) == deployment


@dataclass(frozen=True)
class BotSpec:
    """What to run: the bot's name, its BOT_CONFIG and its labels."""

    name: str
    config: dict
    labels: dict[str, str] = field(default_factory=dict)
    # The longest this bot may run, every deadline of its meeting included: a backend that can have
    # the engine itself end it (kubernetes: activeDeadlineSeconds) does, so a bot that outlived all
    # of them ends even while the control plane is down. None: no such bound.
    deadline_seconds: float | None = None


@dataclass(frozen=True)
class BotInfo:
    """What a backend sees of one bot."""

    container_id: str
    name: str
    status: NormalizedStatus
    raw_status: str
    labels: dict[str, str]
    created_at: datetime | None = None
    exit_code: int | None = None

    @property
    def meeting_id(self) -> int | None:
        raw = self.labels.get(LABEL_MEETING_ID)
        return int(raw) if raw and raw.isdigit() else None


def bot_name(meeting_id: int, session_uid: str) -> str:
    """The bot's container name: one per session (a retried start finds its own bot by it), and
    nothing of the session uid itself, which is a capability while the name is shown to users."""
    digest = hashlib.sha256(f"botmanager-bot-name:{session_uid}".encode()).hexdigest()[:8]
    return f"botmanager-bot-{meeting_id}-{digest}"


def session_digest(session_uid) -> str:
    """What stands for a session wherever it is shown outside the server (its bot's label, the
    Nomad dispatch's idempotency token): one session, one value, and no way back to the uid."""
    return hashlib.sha256(f"botmanager-session:{session_uid}".encode()).hexdigest()


def labels_name_session(labels: dict | None, session_uid) -> bool:
    """Does a bot with these labels run this session? Its label is the session's digest, or, on a
    bot started before labels carried digests, the uid itself."""
    value = (labels or {}).get(LABEL_SESSION_UID)
    return value is not None and value in (str(session_uid), session_digest(session_uid))


def bot_labels(*, deployment: str, meeting_id: int, user_id: int, session_uid) -> dict[str, str]:
    """The labels every launched bot carries: the sweep finds this deployment's bots by them and
    maps each back to its meeting and session (by the session's digest: the uid itself is no label)."""
    return {
        LABEL_MANAGED: "true",
        LABEL_DEPLOYMENT: deployment,
        LABEL_MEETING_ID: str(meeting_id),
        LABEL_USER_ID: str(user_id),
        LABEL_SESSION_UID: session_digest(session_uid),
    }


@runtime_checkable
class Orchestrator(Protocol):
    name: str

    def start(self, spec: BotSpec) -> str:
        """Start the bot; return its container id. Raises OrchestratorError."""

    def terminate(self, container_id: str) -> None:
        """Ask the bot to stop (SIGTERM, `docker kill -s TERM`, Nomad stop) and return at once:
        nothing waits for a bot to die. Escalation is the caller's `kill()`, later. A bot that
        is gone, or still starting, counts as asked. Raises OrchestratorError when unknown."""

    def kill(self, container_id: str) -> None:
        """Force the bot to stop (SIGKILL) and return once the engine took the order. A bot
        that is already gone counts as killed. Raises OrchestratorError when the state is unknown."""

    def stop(self, container_id: str, timeout: float) -> None:
        """Blocking convenience for scripts and tests (never called from a task): terminate,
        wait up to `timeout` seconds, kill. Gone counts as stopped."""

    def instance_id(self) -> str:
        """Which backend instance this is, i.e. where the bots it starts run and whose bots `list()`
        sees: a Docker engine's ID, a Nomad cluster's address and namespace, a host and run
        directory for local processes. Two workers with the same instance see the same bots; the
        sweep judges a bot only from a listing of its own instance. Raises OrchestratorError."""

    def list(self) -> list[BotInfo]:
        """Every bot of this deployment on this instance, in one call to the engine. Raises
        OrchestratorError."""

    def inspect(self, container_id: str) -> BotInfo | None:
        """One bot, or None when the engine says it does not exist. Raises OrchestratorError."""

    def remove(self, container_id: str) -> None:
        """Forget an exited bot (its record, container or job). Gone counts as removed.

        terminate, kill, stop and remove raise NotOurBotError for anything that exists but is not
        this deployment's bot, and touch nothing."""
