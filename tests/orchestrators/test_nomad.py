"""The Nomad backend through python-nomad over real HTTP, against the Nomad fake (no Nomad agent
can run here; see nomad_fake.py), plus its pure status mapping."""
from __future__ import annotations

import hashlib
import json
import socket

import pytest
import requests

from orchestrators.base import (LABEL_DEPLOYMENT, LABEL_SESSION_UID, NormalizedStatus, OrchestratorError,
                                session_digest)
from orchestrators.nomad import NomadOrchestrator, alloc_status, job_status_without_alloc
from tests.orchestrators.conftest import NOMAD_BOT_JOB
from tests.orchestrators.support import find, make_spec, nomad_settings


# --- status mapping (no server) -------------------------------------------------------------------
@pytest.mark.parametrize(("client", "desired", "exit_code", "expected"), [
    ("pending", "run", None, NormalizedStatus.STARTING),
    ("pending", "stop", None, NormalizedStatus.STOPPING),
    ("pending", "evict", None, NormalizedStatus.STOPPING),
    ("running", "run", None, NormalizedStatus.UP),
    ("running", "stop", None, NormalizedStatus.STOPPING),
    ("running", "evict", None, NormalizedStatus.STOPPING),
    ("unknown", "run", None, NormalizedStatus.UP),
    ("unknown", "stop", None, NormalizedStatus.STOPPING),
    ("complete", "run", 0, NormalizedStatus.EXITED),
    ("complete", "stop", 0, NormalizedStatus.EXITED),
    ("complete", "stop", None, NormalizedStatus.EXITED),
    ("complete", "stop", 137, NormalizedStatus.EXITED),
    ("failed", "run", 3, NormalizedStatus.EXITED),
    ("failed", "run", None, NormalizedStatus.FAILED),
    ("failed", "stop", None, NormalizedStatus.FAILED),
    ("lost", "run", None, NormalizedStatus.FAILED),
    ("lost", "stop", None, NormalizedStatus.FAILED),
])
def test_allocation_status_maps_to_documented_normalized_status(client, desired, exit_code, expected):
    assert alloc_status(client, desired, exit_code) is expected


@pytest.mark.parametrize("desired", ["run", "stop", "evict"])
def test_unknown_client_status_is_never_reported_as_gone(desired):
    assert alloc_status("unknown", desired, None).is_running


def test_unrecognized_client_status_is_never_reported_as_gone():
    assert alloc_status("reconnecting", "run", None).is_running


@pytest.mark.parametrize(("job_status", "stopped", "expected"), [
    ("pending", False, NormalizedStatus.REQUESTED),
    ("running", False, NormalizedStatus.STARTING),
    ("dead", True, NormalizedStatus.EXITED),
    ("dead", False, NormalizedStatus.FAILED),
])
def test_job_without_allocation_maps_to_documented_status(job_status, stopped, expected):
    assert job_status_without_alloc(job_status, stopped) is expected


def test_registry_builds_the_nomad_backend_from_the_django_settings(settings):
    # The tests build backends from stand-in settings objects; this one proves the names exist.
    from orchestrators.registry import get_orchestrator

    settings.NOMAD_ADDR, settings.NOMAD_BOT_JOB = "http://nomad.example:4646", "bots-check"
    get_orchestrator.cache_clear()
    try:
        backend = get_orchestrator("nomad")
    finally:
        get_orchestrator.cache_clear()
    assert isinstance(backend, NomadOrchestrator)
    assert (backend.address, backend.job, backend.deployment) == ("http://nomad.example:4646", "bots-check",
                                                                  settings.DEPLOYMENT_NAME)


# --- through the fake -----------------------------------------------------------------------------
@pytest.fixture
def backend(nomad_fake, deployment_name) -> NomadOrchestrator:
    return NomadOrchestrator.from_settings(nomad_settings(nomad_fake.url, deployment_name))


def test_start_dispatches_the_bot_job_with_its_config_variable_name_and_labels_in_meta(backend, nomad_fake,
                                                                                      deployment_name):
    spec = make_spec(deployment_name)
    job_id = backend.start(spec)
    assert job_id.startswith(f"{NOMAD_BOT_JOB}/dispatch-")
    [request] = nomad_fake.dispatch_requests()
    assert request.path == f"/v1/job/{NOMAD_BOT_JOB}/dispatch"
    meta = request.body["Meta"]
    assert meta["BOT_CONFIG_VAR"] == f"botmanager/bots/{deployment_name}/{spec.name}"
    assert meta["BOT_NAME"] == spec.name
    assert json.loads(meta["BOT_LABELS"]) == spec.labels


# --- the bot's secret: in a Nomad Variable, never in the job --------------------------------------
SECRET_CONFIG = {"redisUrl": "redis://bot-user:redis-password-1234@redis:6379/0",
                 "token": "meeting-token-eyJhbGciOi", "botName": "O'Brien's notes"}


def test_no_secret_of_the_bot_is_readable_from_the_dispatched_job(backend, nomad_fake, deployment_name):
    # The attack: a token that may only read jobs reads the bot's job and the job list with Meta.
    spec = make_spec(deployment_name, **SECRET_CONFIG)
    job_id = backend.start(spec)
    job = requests.get(f"{nomad_fake.url}/v1/job/{job_id}", timeout=5).json()
    listing = requests.get(f"{nomad_fake.url}/v1/jobs", params={"prefix": NOMAD_BOT_JOB, "meta": "true"},
                           timeout=5).json()
    readable = json.dumps(job) + json.dumps(listing)
    for secret in ("redis-password-1234", "meeting-token-eyJhbGciOi"):
        assert secret not in readable
    assert "BOT_CONFIG" not in job["Meta"] and job["Payload"] is None


def test_the_session_uid_is_nowhere_a_job_read_token_can_read(backend, nomad_fake, deployment_name):
    # The attack: the uid is a capability (a callback with it ends its meeting); a job-read token
    # reads the dispatched job, its Meta (the bot's labels) and its idempotency token.
    spec = make_spec(deployment_name)
    uid = spec.config["connectionId"]
    job_id = backend.start(spec)
    job = requests.get(f"{nomad_fake.url}/v1/job/{job_id}", timeout=5).json()
    listing = requests.get(f"{nomad_fake.url}/v1/jobs", params={"prefix": NOMAD_BOT_JOB, "meta": "true"},
                           timeout=5).json()
    [request] = nomad_fake.dispatch_requests()
    assert uid not in json.dumps(job) + json.dumps(listing) + json.dumps(request.body) + json.dumps(request.query)
    assert json.loads(job["Meta"]["BOT_LABELS"])[LABEL_SESSION_UID] == session_digest(uid)


def test_the_bots_config_reaches_the_task_through_its_variable(backend, nomad_fake, deployment_name):
    spec = make_spec(deployment_name, **SECRET_CONFIG)
    job_id = backend.start(spec)
    variable = nomad_fake.variable(f"botmanager/bots/{deployment_name}/{spec.name}")
    assert json.loads(variable["Items"]["BOT_CONFIG"]) == spec.config
    # The template of docs/orchestrators.md puts the value in single quotes: it must hold none.
    assert "'" not in variable["Items"]["BOT_CONFIG"]
    assert json.loads(nomad_fake.task_env(job_id)["BOT_CONFIG"]) == spec.config


def test_a_retried_start_updates_its_own_variable_by_check_and_set(backend, nomad_fake, deployment_name):
    spec = make_spec(deployment_name)
    path = f"botmanager/bots/{deployment_name}/{spec.name}"
    first = backend.start(spec)
    written_at = nomad_fake.variable(path)["ModifyIndex"]
    assert backend.start(spec) == first
    puts = [r for r in nomad_fake.requests if r.method == "PUT" and r.path.startswith("/v1/var/")]
    # Create-only first; the retry finds it there (409) and updates it at the index it read.
    assert [r.query["cas"] for r in puts] == [["0"], ["0"], [str(written_at)]]
    assert nomad_fake.variable(path)["ModifyIndex"] > written_at


def test_stopping_a_bot_keeps_its_variable_and_removing_it_deletes_it(backend, nomad_fake, deployment_name):
    spec = make_spec(deployment_name)
    path = f"botmanager/bots/{deployment_name}/{spec.name}"
    job_id = backend.start(spec)
    backend.terminate(job_id)
    backend.kill(job_id)
    backend.stop(job_id, timeout=1)
    assert nomad_fake.variable(path) is not None
    backend.remove(job_id)
    assert nomad_fake.variable(path) is None
    assert backend.inspect(job_id) is None


def test_remove_deletes_no_variable_but_the_bots_own(backend, nomad_fake, deployment_name):
    # A job whose Meta names another variable (forged, or another deployment's) must not make
    # remove() delete it.
    nomad_fake.variables[("default", "ops/database")] = {"Path": "ops/database", "Items": {"pw": "x"},
                                                         "ModifyIndex": 1, "CreateIndex": 1}
    labels = {"botmanager.managed": "true", "botmanager.deployment": deployment_name}
    job_id = requests.post(f"{nomad_fake.url}/v1/job/{NOMAD_BOT_JOB}/dispatch", timeout=5, json={"Meta": {
        "BOT_CONFIG_VAR": "ops/database", "BOT_NAME": "forged", "BOT_LABELS": json.dumps(labels)}}).json()[
        "DispatchedJobID"]
    backend.remove(job_id)
    assert backend.inspect(job_id) is None
    assert nomad_fake.variable("ops/database") is not None


def test_a_refused_dispatch_leaves_no_variable_behind(nomad_fake, deployment_name):
    backend = NomadOrchestrator.from_settings(nomad_settings(nomad_fake.url, deployment_name,
                                                             NOMAD_BOT_JOB="not-registered"))
    with pytest.raises(OrchestratorError):
        backend.start(make_spec(deployment_name))
    assert nomad_fake.variables == {}


def test_a_token_that_cannot_write_variables_gets_an_error_naming_the_capability(backend, nomad_fake,
                                                                                 deployment_name):
    nomad_fake.fail_next(403, "Permission denied", path_prefix="/v1/var/")
    with pytest.raises(OrchestratorError, match="variables capability"):
        backend.start(make_spec(deployment_name))
    assert nomad_fake.dispatch_requests() == []


def test_start_sends_the_idempotency_token_in_the_query_string(backend, nomad_fake, deployment_name):
    spec = make_spec(deployment_name)
    backend.start(spec)
    [request] = nomad_fake.dispatch_requests()
    token = hashlib.sha256(f"botmanager-dispatch:{spec.labels[LABEL_SESSION_UID]}".encode()).hexdigest()
    assert request.query["idempotency_token"] == [token]


def test_retried_start_of_the_same_session_returns_the_same_job(backend, nomad_fake, deployment_name):
    spec = make_spec(deployment_name)
    first = backend.start(spec)
    assert backend.start(spec) == first
    assert [b.container_id for b in backend.list()] == [first]


def test_start_labels_the_bot_with_the_backends_deployment_whatever_the_spec_says(backend, nomad_fake,
                                                                                  deployment_name):
    spec = make_spec("someone-else")
    backend.start(spec)
    [request] = nomad_fake.dispatch_requests()
    assert json.loads(request.body["Meta"]["BOT_LABELS"])[LABEL_DEPLOYMENT] == deployment_name


def test_start_raises_when_the_bot_job_is_not_registered(nomad_fake, deployment_name):
    backend = NomadOrchestrator.from_settings(nomad_settings(nomad_fake.url, deployment_name,
                                                             NOMAD_BOT_JOB="not-registered"))
    with pytest.raises(OrchestratorError, match="no parameterized job 'not-registered'"):
        backend.start(make_spec(deployment_name))


def test_start_raises_when_the_bot_job_does_not_declare_the_meta_keys(nomad_fake, deployment_name):
    nomad_fake.register_parameterized_job("narrow-bot", meta_required=["BOT_CONFIG"])
    backend = NomadOrchestrator.from_settings(nomad_settings(nomad_fake.url, deployment_name,
                                                             NOMAD_BOT_JOB="narrow-bot"))
    with pytest.raises(OrchestratorError, match="meta_required"):
        backend.start(make_spec(deployment_name))


def test_start_raises_on_a_nomad_server_error(backend, nomad_fake, deployment_name):
    nomad_fake.fail_next(500)
    with pytest.raises(OrchestratorError, match="No cluster leader"):
        backend.start(make_spec(deployment_name))


def test_dispatched_job_without_allocation_is_listed_requested(backend, nomad_fake, deployment_name):
    nomad_fake.auto_place = False  # e.g. no client has room: the evaluation is blocked
    job_id = backend.start(make_spec(deployment_name))
    info = find(backend.list(), job_id)
    assert (info.status, info.raw_status) == (NormalizedStatus.REQUESTED, "job:pending")


def test_pending_allocation_is_listed_starting(backend, nomad_fake, deployment_name):
    nomad_fake.auto_run = False
    job_id = backend.start(make_spec(deployment_name))
    info = find(backend.list(), job_id)
    assert (info.status, info.raw_status) == (NormalizedStatus.STARTING, "pending/run")


def test_bot_that_exits_with_an_error_is_listed_exited_with_its_exit_code(backend, nomad_fake, deployment_name):
    job_id = backend.start(make_spec(deployment_name))
    nomad_fake.finish(job_id, 3)
    info = find(backend.list(), job_id)
    assert (info.status, info.raw_status, info.exit_code) == (NormalizedStatus.EXITED, "failed/run", 3)


def test_bot_that_never_ran_is_listed_failed_without_exit_code(backend, nomad_fake, deployment_name):
    job_id = backend.start(make_spec(deployment_name))
    nomad_fake.fail_to_start(job_id)
    info = find(backend.list(), job_id)
    assert (info.status, info.raw_status, info.exit_code) == (NormalizedStatus.FAILED, "failed/run", None)


def test_lost_allocation_is_listed_failed(backend, nomad_fake, deployment_name):
    job_id = backend.start(make_spec(deployment_name))
    nomad_fake.set_alloc_status(job_id, "lost", "stop")
    assert find(backend.list(), job_id).status is NormalizedStatus.FAILED


def test_allocation_of_a_disconnected_client_is_listed_up(backend, nomad_fake, deployment_name):
    job_id = backend.start(make_spec(deployment_name))
    nomad_fake.set_alloc_status(job_id, "unknown", "run")
    info = find(backend.list(), job_id)
    assert (info.status, info.raw_status) == (NormalizedStatus.UP, "unknown/run")


def test_evicted_allocation_is_listed_stopping(backend, nomad_fake, deployment_name):
    job_id = backend.start(make_spec(deployment_name))
    nomad_fake.set_alloc_status(job_id, "running", "evict")
    assert find(backend.list(), job_id).status is NormalizedStatus.STOPPING


def test_rescheduled_bot_is_judged_by_its_newest_allocation(backend, nomad_fake, deployment_name):
    job_id = backend.start(make_spec(deployment_name))
    nomad_fake.reschedule(job_id)
    info = find(backend.list(), job_id)
    assert (info.status, info.raw_status) == (NormalizedStatus.UP, "running/run")


def test_list_takes_two_requests_for_all_bots(backend, nomad_fake, deployment_name):
    for _ in range(3):
        backend.start(make_spec(deployment_name))
    before = len(nomad_fake.requests)
    assert len(backend.list()) == 3
    assert [r.path for r in nomad_fake.requests[before:]] == ["/v1/jobs", "/v1/allocations"]


def test_list_is_empty_when_the_deployment_has_no_bots(backend):
    assert backend.list() == []


def test_list_raises_when_the_bot_job_is_missing(nomad_fake, deployment_name):
    # A wrong NOMAD_BOT_JOB or namespace would otherwise read as "no bots" and orphan every meeting.
    backend = NomadOrchestrator.from_settings(nomad_settings(nomad_fake.url, deployment_name,
                                                             NOMAD_NAMESPACE="elsewhere"))
    with pytest.raises(OrchestratorError, match="has no job 'botmanager-bot'"):
        backend.list()


def test_list_raises_on_a_server_error_listing_jobs(backend, nomad_fake):
    nomad_fake.fail_next(500, path_prefix="/v1/jobs")
    with pytest.raises(OrchestratorError):
        backend.list()


def test_list_raises_on_a_server_error_listing_allocations(backend, nomad_fake, deployment_name):
    backend.start(make_spec(deployment_name))
    nomad_fake.fail_next(503, path_prefix="/v1/allocations")
    with pytest.raises(OrchestratorError):
        backend.list()


def test_list_raises_when_nomad_does_not_answer_in_time(nomad_fake, deployment_name):
    backend = NomadOrchestrator.from_settings(nomad_settings(nomad_fake.url, deployment_name,
                                                             ORCHESTRATOR_QUERY_TIMEOUT_SECONDS=0.3))
    nomad_fake.delay = 1.0
    with pytest.raises(OrchestratorError, match="timed out"):
        backend.list()


def test_list_raises_when_nomad_is_unreachable(deployment_name):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed when the block ends: nothing listens there
    backend = NomadOrchestrator.from_settings(nomad_settings(f"http://127.0.0.1:{port}", deployment_name))
    with pytest.raises(OrchestratorError):
        backend.list()


def test_list_raises_when_nomad_is_too_old_to_return_job_meta(backend, nomad_fake, deployment_name):
    backend.start(make_spec(deployment_name))
    nomad_fake.list_meta_supported = False
    with pytest.raises(OrchestratorError, match="Nomad >= 1.6"):
        backend.list()


def test_stop_deregisters_without_purge_so_the_exit_code_stays_readable(backend, nomad_fake, deployment_name):
    job_id = backend.start(make_spec(deployment_name))
    backend.stop(job_id, timeout=5)
    [request] = [r for r in nomad_fake.requests if r.method == "DELETE"]
    assert "purge" not in request.query
    info = backend.inspect(job_id)
    assert (info.status, info.raw_status, info.exit_code) == (NormalizedStatus.EXITED, "complete/stop", 0)


def test_remove_purges_the_job(backend, nomad_fake, deployment_name):
    job_id = backend.start(make_spec(deployment_name))
    backend.stop(job_id, timeout=5)
    backend.remove(job_id)
    purge = [r for r in nomad_fake.requests if r.method == "DELETE"][-1]
    assert purge.query["purge"] == ["True"]
    assert backend.inspect(job_id) is None


def test_stop_of_a_job_nomad_does_not_know_is_a_no_op(backend, nomad_fake):
    backend.stop(f"{NOMAD_BOT_JOB}/dispatch-1700000000-deadbeef", timeout=5)
    assert [r.method for r in nomad_fake.requests] == ["GET"]  # it asked, and 404 meant gone


def test_stop_refuses_an_id_that_is_not_a_dispatched_bot(backend, nomad_fake):
    # Deregistering the parameterized job itself would stop every bot of the deployment.
    with pytest.raises(OrchestratorError, match="not a dispatched bot"):
        backend.stop(NOMAD_BOT_JOB, timeout=5)
    assert nomad_fake.requests == []


def test_stop_raises_on_a_nomad_server_error(backend, nomad_fake, deployment_name):
    job_id = backend.start(make_spec(deployment_name))
    nomad_fake.fail_next(500, method="DELETE")
    with pytest.raises(OrchestratorError):
        backend.stop(job_id, timeout=5)


def test_inspect_of_a_job_nomad_does_not_know_is_none(backend):
    assert backend.inspect(f"{NOMAD_BOT_JOB}/dispatch-1700000000-deadbeef") is None


def test_inspect_raises_on_a_nomad_server_error(backend, nomad_fake, deployment_name):
    job_id = backend.start(make_spec(deployment_name))
    nomad_fake.fail_next(500, method="GET")
    with pytest.raises(OrchestratorError):
        backend.inspect(job_id)


def test_bot_reports_name_labels_and_submit_time(backend, deployment_name):
    spec = make_spec(deployment_name)
    job_id = backend.start(spec)
    info = find(backend.list(), job_id)
    assert (info.name, info.labels) == (spec.name, spec.labels)
    assert info.created_at is not None


def test_token_and_namespace_are_sent_to_nomad(nomad_fake, deployment_name):
    nomad_fake.acl_token = "s3cret"
    nomad_fake.register_parameterized_job(NOMAD_BOT_JOB, namespace="bots")
    backend = NomadOrchestrator.from_settings(nomad_settings(nomad_fake.url, deployment_name,
                                                             NOMAD_TOKEN="s3cret", NOMAD_NAMESPACE="bots"))
    job_id = backend.start(make_spec(deployment_name))
    assert [b.container_id for b in backend.list()] == [job_id]
    assert ("bots", job_id) in nomad_fake.jobs


def test_a_missing_token_is_an_error_not_an_empty_list(nomad_fake, deployment_name):
    nomad_fake.acl_token = "s3cret"
    backend = NomadOrchestrator.from_settings(nomad_settings(nomad_fake.url, deployment_name))
    with pytest.raises(OrchestratorError, match="Permission denied"):
        backend.list()


def test_nomad_environment_variables_are_not_read_behind_the_settings(monkeypatch, nomad_fake, deployment_name):
    # python-nomad's Nomad() reads NOMAD_ADDR/NOMAD_TOKEN itself; the backend must not.
    monkeypatch.setenv("NOMAD_ADDR", "http://127.0.0.1:9")
    monkeypatch.setenv("NOMAD_TOKEN", "from-the-environment")
    backend = NomadOrchestrator.from_settings(nomad_settings(nomad_fake.url, deployment_name))
    backend.list()
    assert "X-Nomad-Token" not in nomad_fake.requests[-1].headers


def test_a_bot_job_name_that_cannot_go_into_a_filter_is_refused(nomad_fake, deployment_name):
    with pytest.raises(ValueError, match="NOMAD_BOT_JOB"):
        NomadOrchestrator.from_settings(nomad_settings(nomad_fake.url, deployment_name,
                                                       NOMAD_BOT_JOB='bot" or true'))
