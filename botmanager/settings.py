"""Django settings for botmanager.

This module is the only place that reads the process environment. Every knob has a default that
works on a developer's machine: with no DATABASE_URL / REDIS_URL, the embedded PostgreSQL and Redis
servers that `devstack.servers` starts under RUN_DIR are used.
"""
from __future__ import annotations

import ipaddress
import json
import os
from pathlib import Path
from urllib.parse import urlsplit

import dj_database_url

BASE_DIR = Path(__file__).resolve().parent.parent
_env = os.environ


def _str(name: str, default: str) -> str:
    return _env.get(name, default)


def _int(name: str, default: int) -> int:
    raw = _env.get(name)
    return default if raw in (None, "") else int(raw)


def _float(name: str, default: float) -> float:
    raw = _env.get(name)
    return default if raw in (None, "") else float(raw)


def _is_loopback_url(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _bool(name: str, default: bool) -> bool:
    raw = _env.get(name)
    if raw in (None, ""):
        return default
    return raw.strip().lower() in {"1", "true", "yes", "on"}


# --- Core -----------------------------------------------------------------------------------------
DEBUG = _bool("DEBUG", False)
# Host names the web answers to (a request naming another host gets 400: a web page cannot drive a
# local stack through DNS rebinding). Loopback names by default; compose adds `web`.
ALLOWED_HOSTS = [h.strip() for h in _str("ALLOWED_HOSTS", "127.0.0.1,localhost,[::1]").split(",") if h.strip()]
RUN_DIR = Path(_str("RUN_DIR", str(BASE_DIR / ".run"))).resolve()
# While a `make run` of this RUN_DIR runs, its ports, backend and deployment name (RUN_DIR/runstack.env,
# devstack/stackinfo.py) are this process's defaults too: `manage.py` in a second terminal reaches
# the same servers and bots without exporting anything. The environment still wins.
from devstack import stackinfo  # noqa: E402

_env = {**stackinfo.shared_settings(RUN_DIR), **os.environ}
PORT = _int("PORT", 8000)
# The URL bots use to reach the callbacks; derived from PORT for the local stack.
PUBLIC_BASE_URL = _str("PUBLIC_BASE_URL", f"http://127.0.0.1:{PORT}").rstrip("/")

# --- Embedded servers (used only when the URL is not configured) ----------------------------------
EMBEDDED_POSTGRES_PORT = _int("EMBEDDED_POSTGRES_PORT", 54329)
EMBEDDED_REDIS_PORT = _int("EMBEDDED_REDIS_PORT", 63799)
EMBEDDED_POSTGRES = not _env.get("DATABASE_URL")
EMBEDDED_REDIS = not _env.get("REDIS_URL")

# --- Secrets --------------------------------------------------------------------------------------
# No known value ever signs or authenticates: each secret comes from the environment or, on the
# local stack (an embedded server in use), from RUN_DIR/secrets.json (0600), generated on first use
# (devstack/secrets.py) so `make run`, `manage.py` and the tests of one RUN_DIR agree. A
# deployment (both URLs set) must give them; botmanager/checks.py refuses to start on a missing,
# short or publicly known value.
from devstack import secrets as local_secrets  # noqa: E402

_local_secrets = local_secrets.load(RUN_DIR, create=EMBEDDED_POSTGRES or EMBEDDED_REDIS)


def _secret(name: str) -> str:
    return _env.get(name) or _local_secrets.get(name, "")


SECRET_KEY = _secret("SECRET_KEY")
# Signs the meeting token (JWT) handed to each bot: its own key, never SECRET_KEY.
BOT_TOKEN_SECRET = _secret("BOT_TOKEN_SECRET")
ADMIN_API_TOKEN = _secret("ADMIN_API_TOKEN")
EMBEDDED_POSTGRES_PASSWORD = _local_secrets.get("EMBEDDED_POSTGRES_PASSWORD", "")
EMBEDDED_POSTGRES_SUPERUSER_PASSWORD = _local_secrets.get("EMBEDDED_POSTGRES_SUPERUSER_PASSWORD", "")
EMBEDDED_REDIS_PASSWORD = _local_secrets.get("EMBEDDED_REDIS_PASSWORD", "")

DATABASE_URL = _env.get("DATABASE_URL") or (
    f"postgres://botmanager:{EMBEDDED_POSTGRES_PASSWORD}@127.0.0.1:{EMBEDDED_POSTGRES_PORT}/botmanager"
)
REDIS_URL = _env.get("REDIS_URL") or f"redis://:{EMBEDDED_REDIS_PASSWORD}@127.0.0.1:{EMBEDDED_REDIS_PORT}/0"

DATABASES = {"default": dj_database_url.parse(DATABASE_URL, conn_max_age=_int("DB_CONN_MAX_AGE", 60))}
# The hot-path statements (bot callbacks, the meeting lock, every API request's key lookup) run as
# server-side prepared statements (common/compiled.py): PREPARE once per database session, then
# EXECUTE. Turn off behind a transaction-pooling proxy (PgBouncer in transaction mode), where one
# client's session is not one server session.
DB_PREPARED_STATEMENTS = _bool("DB_PREPARED_STATEMENTS", True)
# Parallel test runs on one server need distinct test database names.
DATABASES["default"]["TEST"] = {"NAME": _str("TEST_DATABASE_NAME", "test_botmanager")}
# Redis database the tests use as Celery broker, apart from a running `make run`.
TEST_REDIS_DB = _int("TEST_REDIS_DB", 9)

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    # The OpenAPI schema (/openapi.json, common/openapi.py) and Swagger UI (/docs) with its
    # assets served from the sidecar package, not a CDN.
    "drf_spectacular",
    "drf_spectacular_sidecar",
    # Throttles the Django admin's login (failed attempts counted in PostgreSQL).
    "axes",
    "botmanager",  # its AppConfig registers the start-up checks (botmanager/checks.py)
    "accounts",
    "idempotency",
    "meetings",
    "webhooks",
]

MIDDLEWARE = [
    "observability.metrics.CallbackLatencyMiddleware",  # first: times the whole callback
    "django.middleware.security.SecurityMiddleware",
    # Serves the Django admin's CSS/JS under gunicorn, straight from the installed apps.
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Last, as django-axes asks: it answers a locked-out login attempt.
    "axes.middleware.AxesMiddleware",
]

AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",  # first: refuses a locked-out login before the password check
    "django.contrib.auth.backends.ModelBackend",
]
# Django admin login throttling: after ADMIN_LOGIN_FAILURE_LIMIT failed logins for one account
# from one client address, that pair is refused for ADMIN_LOGIN_COOLOFF_MINUTES (`manage.py
# axes_reset` lifts it at once). By the pair, not by either alone: an attacker's wrong passwords
# for "admin" lock out the attacker, not the real admin at their own address.
AXES_FAILURE_LIMIT = _int("ADMIN_LOGIN_FAILURE_LIMIT", 5)
AXES_COOLOFF_TIME = _float("ADMIN_LOGIN_COOLOFF_MINUTES", 15) / 60  # hours
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
# The client address behind a trusted proxy only (TRUSTED_PROXY_ADDRESSES, common/clientaddr.py).
AXES_CLIENT_IP_CALLABLE = "common.clientaddr.client_address"
# The key under which the admin login form hands the account to authenticate(): "username", whatever
# the user model's USERNAME_FIELD (email) is. axes' default (USERNAME_FIELD) recorded every attempt
# without its account, so the lockout was by address alone.
AXES_USERNAME_FORM_FIELD = "username"
AXES_RESET_ON_SUCCESS = True
AXES_LOCKOUT_CALLABLE = "common.errors.login_locked_out"
AXES_VERBOSE = False

# --- Request bodies -------------------------------------------------------------------------------
# Every JSON body (the DRF parser and the callback fast path, common/jsonbody.py): larger than
# this answers 413, nested deeper than JSON_MAX_DEPTH answers 422. Django's own limit on a body it
# reads is the same.
JSON_MAX_BODY_BYTES = _int("JSON_MAX_BODY_BYTES", 1024 * 1024)
JSON_MAX_DEPTH = _int("JSON_MAX_DEPTH", 32)
DATA_UPLOAD_MAX_MEMORY_SIZE = JSON_MAX_BODY_BYTES
# What a bot's callback may add beyond its status (the Vexa bot's forensic fields), as stored:
# the last CALLBACK_BOT_LOGS_MAX_LINES lines of `bot_logs`, each cut at CALLBACK_BOT_LOG_LINE_MAX_CHARS
# (kept with the callback's transition); `bot_resources` and `speaker_events` kept while their JSON
# is at most CALLBACK_EXTRA_MAX_CHARS long, else cut with a marker.
CALLBACK_BOT_LOGS_MAX_LINES = _int("CALLBACK_BOT_LOGS_MAX_LINES", 50)
CALLBACK_BOT_LOG_LINE_MAX_CHARS = _int("CALLBACK_BOT_LOG_LINE_MAX_CHARS", 1000)
CALLBACK_EXTRA_MAX_CHARS = _int("CALLBACK_EXTRA_MAX_CHARS", 4000)
# A CSRF refusal (a POST to a page without its token) is JSON like every other error.
CSRF_FAILURE_VIEW = "common.errors.csrf_failure"

ROOT_URLCONF = "botmanager.urls"
WSGI_APPLICATION = "botmanager.wsgi.application"
AUTH_USER_MODEL = "accounts.User"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
APPEND_SLASH = False

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True
STATIC_URL = "static/"
STATIC_ROOT = None  # served from the apps by WhiteNoise (WHITENOISE_USE_FINDERS)
WHITENOISE_USE_FINDERS = True  # no collectstatic step needed

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["accounts.authentication.APIKeyAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["common.jsonbody.LimitedJSONParser"],
    "EXCEPTION_HANDLER": "common.errors.json_exception_handler",
    "UNAUTHENTICATED_USER": None,
    "DEFAULT_SCHEMA_CLASS": "common.openapi.AutoSchema",
    # Per-user rate limits (common/ratelimit.py; API_RATE_LIMIT_* and BOT_REQUEST_RATE_LIMIT_*).
    "DEFAULT_THROTTLE_CLASSES": ["common.ratelimit.UserRateThrottle"],
}

# The served OpenAPI 3 schema: /openapi.json and Swagger UI at /docs, both without authentication.
SPECTACULAR_SETTINGS = {
    "TITLE": "botmanager API",
    "DESCRIPTION": "The control plane for meeting bots, compatible with the Vexa bot-manager API. "
                   "Every error is JSON with a `detail` string.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SERVE_AUTHENTICATION": [],
    "SERVE_PERMISSIONS": ["rest_framework.permissions.AllowAny"],
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    "COMPONENT_SPLIT_PATCH": False,  # PATCH bodies have required fields too
    # One name per choice set (the same set is used by several fields).
    "ENUM_NAME_OVERRIDES": {
        "MeetingStatus": "meetings.lifecycle.statuses.MeetingStatus",
        "Platform": "meetings.lifecycle.statuses.Platform",
        "CompletionReason": "meetings.lifecycle.statuses.CompletionReason",
        "FailureStage": "meetings.lifecycle.statuses.FailureStage",
        "TransitionSource": "meetings.lifecycle.statuses.TransitionSource",
        "CallbackResultStatus": ["processed", "ok", "container_updated"],
        "ReadinessStatus": ["ok", "unavailable"],
        "LivenessStatus": ["ok"],
    },
    "PREPROCESSING_HOOKS": [],
    "POSTPROCESSING_HOOKS": ["drf_spectacular.hooks.postprocess_schema_enums", "meetings.api.schema.one_path_per_callback",
                             "common.openapi.postprocess"],
}

# --- Users and bots -------------------------------------------------------------------------------
DEFAULT_MAX_CONCURRENT_BOTS = _int("DEFAULT_MAX_CONCURRENT_BOTS", 1)
BOT_TOKEN_TTL_SECONDS = _int("BOT_TOKEN_TTL_SECONDS", 24 * 3600)
DEFAULT_BOT_NAME = _str("DEFAULT_BOT_NAME", "Botmanager Notetaker")
# automaticLeave timeouts handed to the bot, in milliseconds.
BOT_WAITING_ROOM_TIMEOUT_MS = _int("BOT_WAITING_ROOM_TIMEOUT_MS", 300_000)
BOT_NO_ONE_JOINED_TIMEOUT_MS = _int("BOT_NO_ONE_JOINED_TIMEOUT_MS", 120_000)
BOT_EVERYONE_LEFT_TIMEOUT_MS = _int("BOT_EVERYONE_LEFT_TIMEOUT_MS", 60_000)

# Webhooks to private, loopback, link-local, CGNAT, multicast, reserved addresses and their
# IPv6 embeddings (SSRF guard, accounts/webhook.py): refused unless this is set (a receiver on
# this machine while developing).
WEBHOOK_ALLOW_PRIVATE_ADDRESSES = _bool("WEBHOOK_ALLOW_PRIVATE_ADDRESSES", False)
# Delivery (webhooks/): timeout of one attempt (all of it: connect, send, answer, read); retries
# with exponential backoff and jitter on network errors, 408, 429 and 5xx until the retry window
# (from the event) is over.
WEBHOOK_TIMEOUT_SECONDS = _float("WEBHOOK_TIMEOUT_SECONDS", 10)
# A receiver that does not even accept the connection is given up on this soon (within the
# attempt's timeout): an unreachable host must not hold a delivery thread for the whole timeout.
WEBHOOK_CONNECT_TIMEOUT_SECONDS = _float("WEBHOOK_CONNECT_TIMEOUT_SECONDS", 3)
WEBHOOK_RETRY_WINDOW_SECONDS = _float("WEBHOOK_RETRY_WINDOW_SECONDS", 24 * 3600)
WEBHOOK_BACKOFF_BASE_SECONDS = _float("WEBHOOK_BACKOFF_BASE_SECONDS", 10)
WEBHOOK_BACKOFF_MAX_SECONDS = _float("WEBHOOK_BACKOFF_MAX_SECONDS", 3600)
# No slow receiver may hold everyone's delivery threads: at most this many attempts of one user's
# deliveries run at a time; the others wait (not an attempt) and are tried again this soon.
WEBHOOK_MAX_IN_FLIGHT_PER_USER = _int("WEBHOOK_MAX_IN_FLIGHT_PER_USER", 4)
WEBHOOK_CAP_RETRY_SECONDS = _float("WEBHOOK_CAP_RETRY_SECONDS", 2)
# After this many consecutive failed attempts to one URL, attempts to it wait (not counted) for a
# back-off starting at WEBHOOK_ENDPOINT_BACKOFF_SECONDS, doubling up to WEBHOOK_BACKOFF_MAX_SECONDS,
# then one probe goes through; an answer resets it.
WEBHOOK_ENDPOINT_FAILURE_THRESHOLD = _int("WEBHOOK_ENDPOINT_FAILURE_THRESHOLD", 5)
WEBHOOK_ENDPOINT_BACKOFF_SECONDS = _float("WEBHOOK_ENDPOINT_BACKOFF_SECONDS", 30)
# Period of the job that re-enqueues pending deliveries whose task was lost.
WEBHOOK_REDRIVE_INTERVAL_SECONDS = _float("WEBHOOK_REDRIVE_INTERVAL_SECONDS", 30)
# An endpoint whose every attempt has failed for this long is disabled: its deliveries are held
# (recorded, not sent) until the user re-enables it with PUT /user/webhook.
WEBHOOK_ENDPOINT_DISABLE_AFTER_SECONDS = _float("WEBHOOK_ENDPOINT_DISABLE_AFTER_SECONDS", 3 * 24 * 3600)
# POST /user/webhook/redeliver: at most this many deliveries per request.
WEBHOOK_REDELIVER_MAX = _int("WEBHOOK_REDELIVER_MAX", 1000)

# --- Retention ------------------------------------------------------------------------------------
# How long what piles up is kept (common/retention.py runs the purgers in bounded batches): the
# transitions, with their event bodies, of meetings that ended this many days ago, and finished
# webhook deliveries with their attempts. A purged meeting keeps its row (the counts need it).
RETENTION_TRANSITIONS_DAYS = _float("RETENTION_TRANSITIONS_DAYS", 90)
RETENTION_DELIVERIES_DAYS = _float("RETENTION_DELIVERIES_DAYS", 30)
# Rows per delete: each batch is one short transaction, so no lock is held for long. Small enough
# that a callback meeting a batch in progress barely waits (200: about 6 ms a batch; 1000 took
# 16 ms and added 2-7 ms to the callbacks' p99 while purging, 200 adds 1-3, docs/benchmarks.md).
RETENTION_BATCH_SIZE = _int("RETENTION_BATCH_SIZE", 200)
RETENTION_INTERVAL_SECONDS = _float("RETENTION_INTERVAL_SECONDS", 3600)
# A run stops starting batches after this long; the next run goes on where it stopped.
RETENTION_TIME_BUDGET_SECONDS = _float("RETENTION_TIME_BUDGET_SECONDS", 30)
# The share of a run's time spent deleting: after each batch the run pauses so that deleting takes
# at most this fraction (0.5: a batch of 6 ms, then 6 ms of rest). On the web's cores the purge
# would otherwise take CPU from the callbacks while it clears a backlog (docs/benchmarks.md).
RETENTION_DUTY_CYCLE = min(1.0, max(0.05, _float("RETENTION_DUTY_CYCLE", 0.5)))

# --- Orchestrators --------------------------------------------------------------------------------
ORCHESTRATOR = _str("ORCHESTRATOR", "process")
# Two deployments on one engine never touch each other's bots: every bot carries this label.
DEPLOYMENT_NAME = _str("DEPLOYMENT_NAME", "local")
PROCESS_BOT_COMMAND = _str("PROCESS_BOT_COMMAND", "")  # empty: the simulated bot with this Python
BOT_IMAGE = _str("BOT_IMAGE", "botmanager-simbot:latest")
# Network the bot containers join. Default: `host` when the bots are told to call back on a
# loopback address (PUBLIC_BASE_URL; `make run`'s default), the only network from which a bot
# reaches the web and the embedded Redis listening on 127.0.0.1 of the engine's machine (a local
# engine on Linux); else the engine's default bridge. Compose sets its own network.
DOCKER_NETWORK = _str("DOCKER_NETWORK", "host" if _is_loopback_url(PUBLIC_BASE_URL) else "")
# Memory limit of one bot container (docker's units: 2g, 1536m; `0`: none). 2g holds a headless
# Chromium in one meeting with room to spare; a bot over it is OOM-killed alone, not the host.
DOCKER_BOT_MEM_LIMIT = _str("DOCKER_BOT_MEM_LIMIT", "2g")
DOCKER_BOT_NANO_CPUS = _int("DOCKER_BOT_NANO_CPUS", 0)
NOMAD_ADDR = _str("NOMAD_ADDR", "http://127.0.0.1:4646")
NOMAD_TOKEN = _str("NOMAD_TOKEN", "")
NOMAD_NAMESPACE = _str("NOMAD_NAMESPACE", "")
NOMAD_BOT_JOB = _str("NOMAD_BOT_JOB", "botmanager-bot")

# --- Bot isolation (orchestrators/) ---------------------------------------------------------------
# Most processes (threads count) one bot container may hold: a fork bomb in a bot stops there. A
# headless Chromium in a meeting runs a few hundred threads; 1024 leaves headroom. 0: no limit.
DOCKER_BOT_PIDS_LIMIT = _int("DOCKER_BOT_PIDS_LIMIT", 1024)
# Linux capabilities given back to bot containers, comma-separated (e.g. SYS_ADMIN for a Chromium
# that insists on its own sandbox). Default none: every capability is dropped.
DOCKER_BOT_CAP_ADD = [c.strip() for c in _str("DOCKER_BOT_CAP_ADD", "").split(",") if c.strip()]
# Variables of the service's environment a process bot inherits besides PATH, HOME, LANG, LANGUAGE,
# TZ, TMPDIR and LC_* (comma-separated names or patterns such as `SIMBOT_*`): nothing else, so no
# secret of the service reaches a bot.
PROCESS_BOT_ENV_PASS = [n.strip() for n in _str("PROCESS_BOT_ENV_PASS", "SIMBOT_*").split(",") if n.strip()]
# Run process bots as this user (the service must run as root); empty: as the service's own user,
# who can read RUN_DIR/secrets.json (the process backend is for development).
PROCESS_BOT_USER = _str("PROCESS_BOT_USER", "")
# Nomad: each bot's BOT_CONFIG is a Nomad Variable at <prefix>/<DEPLOYMENT_NAME>/<bot name>, never in
# the dispatched job (whose Meta any job-read token sees); the bot job's template reads it.
NOMAD_BOT_VAR_PREFIX = _str("NOMAD_BOT_VAR_PREFIX", "botmanager/bots")
# Kubernetes (orchestrators/kubernetes.py): one pod per bot in this namespace.
KUBERNETES_NAMESPACE = _str("KUBERNETES_NAMESPACE", "botmanager-bots")
# The operator's Pod manifest (YAML) the bot pods are made from; empty: one container `bot` of BOT_IMAGE.
KUBERNETES_POD_TEMPLATE = _str("KUBERNETES_POD_TEMPLATE", "")
# Empty: the pod's service account when running in a cluster, else the default kubeconfig.
KUBERNETES_KUBECONFIG = _str("KUBERNETES_KUBECONFIG", "")
KUBERNETES_CONTEXT = _str("KUBERNETES_CONTEXT", "")
# Names the cluster in the instance id instead of the kube-system namespace's UID (whose read needs
# a cluster-scoped grant).
KUBERNETES_CLUSTER_ID = _str("KUBERNETES_CLUSTER_ID", "")
# A bot pod still waiting for its image (or its container config) this long after creation is Failed.
KUBERNETES_IMAGE_PULL_TIMEOUT_SECONDS = _float("KUBERNETES_IMAGE_PULL_TIMEOUT_SECONDS", 300)
# Set by the kubelet in every pod: the service runs in a cluster (not an operator setting).
KUBERNETES_IN_CLUSTER = bool(_env.get("KUBERNETES_SERVICE_HOST"))
# Engine endpoint of the docker backend; empty: the local socket (unix:///var/run/docker.sock).
DOCKER_HOST = _str("DOCKER_HOST", "")
# Timeout of one call to the Docker engine or the Nomad API that starts or removes a bot.
ORCHESTRATOR_TIMEOUT_SECONDS = _float("ORCHESTRATOR_TIMEOUT_SECONDS", 30)
# Timeout of list, inspect and signal calls: the sweep, the finalizers and request paths make
# them, and a hung engine must not hold those for long (unknown state is handled as such).
ORCHESTRATOR_QUERY_TIMEOUT_SECONDS = _float("ORCHESTRATOR_QUERY_TIMEOUT_SECONDS", 5)
# How long a request (GET /bots/status) waits for the engine's listing; an engine that failed or
# did not answer in time is answered 503 for this long without being asked again
# (orchestrators/request_listing.py), so a hung engine never holds the web's workers.
ORCHESTRATOR_REQUEST_TIMEOUT_SECONDS = _float("ORCHESTRATOR_REQUEST_TIMEOUT_SECONDS", 2)
# A live meeting whose bot's instance no sweep has listed for this long is reported as unseen and
# left to the explicit lost-instance policy (meetings/stopping/instances.py), never judged gone.
INSTANCE_UNSEEN_SECONDS = _float("INSTANCE_UNSEEN_SECONDS", 300)
# Set by CI: the Docker tests must run there, so a skipped Docker test fails the run.
CI = _bool("CI", False)

# --- Lifecycle timing knobs (seconds) -------------------------------------------------------------
BOT_STOP_DELAY_SECONDS = _float("BOT_STOP_DELAY_SECONDS", 30)
BOT_STOP_GRACE_SECONDS = _float("BOT_STOP_GRACE_SECONDS", 10)
BOT_STOP_TIMEOUT_SECONDS = _float("BOT_STOP_TIMEOUT_SECONDS", 10)
ORPHAN_SWEEP_INTERVAL_SECONDS = _float("ORPHAN_SWEEP_INTERVAL_SECONDS", 60)
ORPHAN_GRACE_SECONDS = _float("ORPHAN_GRACE_SECONDS", 60)
REQUESTED_TIMEOUT_SECONDS = _float("REQUESTED_TIMEOUT_SECONDS", 300)
JOINING_TIMEOUT_SECONDS = _float("JOINING_TIMEOUT_SECONDS", 600)
AWAITING_ADMISSION_TIMEOUT_SECONDS = _float("AWAITING_ADMISSION_TIMEOUT_SECONDS", 900)
MAX_BOT_DURATION_SECONDS = _float("MAX_BOT_DURATION_SECONDS", 4 * 3600)

# --- Scheduled bots (POST /bots with join_at; meetings/launching/scheduled.py) --------------------
# How far ahead a bot may be scheduled.
SCHEDULED_MAX_AHEAD_DAYS = _float("SCHEDULED_MAX_AHEAD_DAYS", 30)
# How often the beat asks the scheduler to launch the scheduled bots that are due.
SCHEDULED_LAUNCH_INTERVAL_SECONDS = _float("SCHEDULED_LAUNCH_INTERVAL_SECONDS", 10)
# A scheduled bot is launched this long before its join_at (a bot takes a moment to start).
SCHEDULED_LAUNCH_LEAD_SECONDS = _float("SCHEDULED_LAUNCH_LEAD_SECONDS", 30)
# How long after its join_at a scheduled bot may still be launched (it waits for a seat when the
# user is at the limit, or for the scheduler after an outage); past that the sweep fails it.
SCHEDULED_LAUNCH_WINDOW_SECONDS = _float("SCHEDULED_LAUNCH_WINDOW_SECONDS", 600)

# --- Fair share: per-user rate limits and caps (common/ratelimit.py) ------------------------------
# Token buckets in Redis per user, shared by every web worker and host (common/ratelimit.py):
# every user API request takes a token from a bucket refilled at API_RATE_LIMIT_PER_SECOND holding
# at most API_RATE_LIMIT_BURST; an empty bucket answers 429 with Retry-After. 0 turns a limit off.
API_RATE_LIMIT_PER_SECOND = _float("API_RATE_LIMIT_PER_SECOND", 20)
API_RATE_LIMIT_BURST = _int("API_RATE_LIMIT_BURST", 200)
# POST /bots also takes from a tighter bucket of its own: a launch costs a process or a container.
BOT_REQUEST_RATE_LIMIT_PER_MINUTE = _float("BOT_REQUEST_RATE_LIMIT_PER_MINUTE", 60)
BOT_REQUEST_RATE_LIMIT_BURST = _int("BOT_REQUEST_RATE_LIMIT_BURST", 30)
# How long a request waits for the limiter's answer; Redis unreachable or slower: the request is
# served unlimited (fail open) and a warning logged.
RATE_LIMIT_REDIS_TIMEOUT_SECONDS = _float("RATE_LIMIT_REDIS_TIMEOUT_SECONDS", 0.5)
# Bots one user may have scheduled (waiting for their join_at) at once; one more answers 409.
# 0: no cap.
SCHEDULED_BOTS_PER_USER = _int("SCHEDULED_BOTS_PER_USER", 100)
# The data a user writes into a meeting (PATCH /meetings/...: name, participants, languages, notes)
# is copied into every later transition and webhook: at most this many items per list, and this
# many bytes of JSON for those fields together once merged (422 beyond).
MEETING_DATA_MAX_ITEMS = _int("MEETING_DATA_MAX_ITEMS", 1000)
MEETING_DATA_MAX_BYTES = _int("MEETING_DATA_MAX_BYTES", 64 * 1024)
# GET /meetings: meetings per page without `limit`, and the largest `limit` (as Vexa's meeting API).
MEETINGS_PAGE_DEFAULT = _int("MEETINGS_PAGE_DEFAULT", 100)
MEETINGS_PAGE_MAX = _int("MEETINGS_PAGE_MAX", 500)
# GET /events: a page stops before its event bodies would pass this many bytes (one event at least).
EVENTS_PAGE_MAX_BYTES = _int("EVENTS_PAGE_MAX_BYTES", 1024 * 1024)

# --- Idempotency keys (idempotency/) --------------------------------------------------------------
# POST /bots, DELETE /bots/... and PUT .../config with an `Idempotency-Key` header: the first answer
# is kept this long and given again to the same key with the same request (a day, as hosted APIs do).
IDEMPOTENCY_KEY_TTL_SECONDS = _int("IDEMPOTENCY_KEY_TTL_SECONDS", 24 * 3600)
# A request holding its key longer than this is taken for crashed: the key may be used again. Longer
# than any of those requests takes (milliseconds; a PUT .../config waits on Redis a few seconds at most).
IDEMPOTENCY_LEASE_SECONDS = _int("IDEMPOTENCY_LEASE_SECONDS", 60)

# --- Celery ---------------------------------------------------------------------------------------
CELERY_BROKER_URL = _str("CELERY_BROKER_URL", REDIS_URL)
WEB_CONCURRENCY = _int("WEB_CONCURRENCY", 2)
# gunicorn worker class of the web (botmanager/gunicorn_conf.py). gevent: one greenlet per
# connection, so clients that send slowly or stall wait without holding a worker (psycopg2 made
# cooperative with psycogreen); each worker takes at most WEB_WORKER_CONNECTIONS connections, and
# each connection holds at most one PostgreSQL connection (keep WEB_CONCURRENCY x this below the
# server's max_connections). `sync` is the old behaviour: any slow client holds a whole worker.
WEB_WORKER_CLASS = _str("WEB_WORKER_CLASS", "gevent")
WEB_WORKER_CONNECTIONS = _int("WEB_WORKER_CONNECTIONS", 100)
# Event streams (GET /events/stream) a worker holds besides its WEB_WORKER_CONNECTIONS: gunicorn
# takes WEB_WORKER_CONNECTIONS + EVENT_STREAMS_PER_WORKER connections per worker, so held streams
# never take the places of requests. A stream holds a greenlet and a Redis connection, no
# PostgreSQL connection. One more stream in a full worker is answered 503.
EVENT_STREAMS_PER_WORKER = _int("EVENT_STREAMS_PER_WORKER", 200)
# Streams one user may hold at a time, over all workers and hosts (429 beyond).
EVENT_STREAMS_PER_USER = _int("EVENT_STREAMS_PER_USER", 10)
# A comment line is sent on a quiet stream this often: proxies keep it open, a client that went
# away is noticed (the write fails) and its stream ends.
EVENT_STREAM_HEARTBEAT_SECONDS = _float("EVENT_STREAM_HEARTBEAT_SECONDS", 15)

# --- Fair share of event streams (meetings/events/stream.py) --------------------------------------
# Streams held at once over all workers and hosts (Redis); one more answers 503. Default: the
# places of this host's workers, WEB_CONCURRENCY x EVENT_STREAMS_PER_WORKER; with several hosts set
# it to the sum of their workers' places.
EVENT_STREAMS_TOTAL = _int("EVENT_STREAMS_TOTAL", WEB_CONCURRENCY * EVENT_STREAMS_PER_WORKER)
# The last this many places of EVENT_STREAMS_TOTAL go only to a user's first stream, so users who
# hold many streams cannot take every place: a further stream is refused (429) once only these
# are left. Default: a quarter of the total.
EVENT_STREAMS_RESERVED = _int("EVENT_STREAMS_RESERVED", EVENT_STREAMS_TOTAL // 4)
# GET /events: events per page when `limit` is not given, and the largest `limit` (also the batch
# of a stream's replay).
EVENTS_PAGE_DEFAULT = _int("EVENTS_PAGE_DEFAULT", 100)
EVENTS_PAGE_MAX = _int("EVENTS_PAGE_MAX", 1000)
# GET /events lists an event once every transaction that may precede it has ended (milliseconds);
# while some writing transaction runs long, a page waits this long at most, then comes back empty.
EVENTS_SETTLE_WAIT_SECONDS = _float("EVENTS_SETTLE_WAIT_SECONDS", 2)
# Seconds a client may take to send its request line and headers / idle between keep-alive requests.
WEB_KEEPALIVE_SECONDS = _int("WEB_KEEPALIVE_SECONDS", 5)
# Worker pools (botmanager/workers.py): lifecycle processes; threads waiting on the orchestrator;
# threads waiting on webhook receivers.
CELERY_CONCURRENCY = _int("CELERY_CONCURRENCY", 2)
CELERY_ORCHESTRATOR_CONCURRENCY = _int("CELERY_ORCHESTRATOR_CONCURRENCY", 32)
CELERY_WEBHOOK_CONCURRENCY = _int("CELERY_WEBHOOK_CONCURRENCY", 16)
# Extra task routes, consulted before the queues the tasks declare (common/tasks.py), as JSON:
# {"meetings.post_meeting": {"queue": "postmeeting"}}.
CELERY_TASK_ROUTES = json.loads(_str("CELERY_TASK_ROUTES", "") or "{}")

# --- Bot credentials (meetings/launching/bot_credentials.py) --------------------------------------
# Each bot session gets its own Redis user that can subscribe to its command channels only. This
# adds what the operator's transcription pipeline needs from a bot: comma-separated
# `COMMAND target` pairs, each one command (PUBLISH on a channel; XADD, RPUSH, LTRIM, SET... on a
# key) on one key or channel; `{meeting_id}` is the bot's own meeting. No globs, and never one of
# our keys, queues or channels (refused at start). Empty: commands only. Default: what a Vexa bot
# 0.10.x writes.
BOT_REDIS_GRANTS = _str("BOT_REDIS_GRANTS", ", ".join([
    "XADD transcription_segments", "XADD speaker_events_relative",
    "PUBLISH meeting:{meeting_id}:segments", "PUBLISH va:meeting:{meeting_id}:events",
    "RPUSH va:meeting:{meeting_id}:event_log", "LTRIM va:meeting:{meeting_id}:event_log",
]))

# --- Logging --------------------------------------------------------------------------------------
LOG_LEVEL = _str("LOG_LEVEL", "INFO")
# plain: human lines (make run); json: one JSON object per line with the structured fields
# (observability/jsonlog.py; the compose file sets it).
LOG_FORMAT = _str("LOG_FORMAT", "plain").strip().lower()
from observability.jsonlog import logging_config  # noqa: E402

LOGGING = logging_config(LOG_FORMAT, LOG_LEVEL)

# --- Health and metrics ---------------------------------------------------------------------------
# Where gunicorn's workers keep prometheus-client's per-process files (multiprocess mode); empty:
# single-process metrics. prometheus-client reads this variable itself, at import.
PROMETHEUS_MULTIPROC_DIR = _str("PROMETHEUS_MULTIPROC_DIR", "")
# Set: /metrics needs `Authorization: Bearer <it>`. Empty: /metrics answers only loopback clients
# that came directly (no proxy header), as `make run`; anyone else gets 403.
METRICS_TOKEN = _str("METRICS_TOKEN", "")
# /readyz: how long each dependency check may take.
READYZ_TIMEOUT_SECONDS = _float("READYZ_TIMEOUT_SECONDS", 3)
# The status-duration histogram reads new transitions on scrape, at most this many per scrape (a
# first scrape over a long history catches up over several), and only those older than the settle
# time (an id is taken before its transaction commits; a younger, still invisible one would be
# passed over for good once a later id is counted).
METRICS_STATUS_TIME_BATCH = _int("METRICS_STATUS_TIME_BATCH", 100_000)
METRICS_STATUS_TIME_SETTLE_SECONDS = _float("METRICS_STATUS_TIME_SETTLE_SECONDS", 10)
# The operations console shows times to the second (a whole meeting can happen within a minute).
FORMAT_MODULE_PATH = "botmanager.formats"

# --- Operator surface -----------------------------------------------------------------------------
# The reverse proxies whose X-Forwarded-For is believed (the admin login lockout's client address,
# common/clientaddr.py): comma-separated addresses, networks (CIDR) or host names (resolved
# again every 30 s; compose sets its `proxy` service). Empty: the header is never believed.
TRUSTED_PROXY_ADDRESSES = [a.strip() for a in _str("TRUSTED_PROXY_ADDRESSES", "").split(",") if a.strip()]
