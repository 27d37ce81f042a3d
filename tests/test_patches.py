"""Every patch of a library's internals (patches/) refuses to start on a version of that library it
was not written for, before it patches anything; the pinned versions installed here pass.

A different installed version is simulated by replacing the one version lookup the guard uses
(`patches.versions.installed`); what each patch does is specified by its own tests
(test_broker_outage.py, test_task_connections.py, observability/test_gunicorn.py)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import psycopg2.extensions
import pytest
from celery import Celery
from django.db import connections

import patches
from patches import broker_outage, greenlet_connections, task_connections, versions
from patches.versions import PatchVersionError
from tests.support import stack_env

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def installed(monkeypatch):
    """`installed(celery="5.8.0")`: the guard sees these versions, the real ones for the rest."""
    real = versions.installed

    def simulate(**fake):
        monkeypatch.setattr(versions, "installed", lambda name: fake[name] if name in fake else real(name))

    return simulate


@pytest.mark.parametrize("patch", patches.PATCHES, ids=lambda patch: patch.__name__)
def test_the_installed_libraries_are_versions_each_patch_was_written_for(patch):
    patch.check()


@pytest.mark.parametrize("patch", patches.PATCHES, ids=lambda patch: patch.__name__)
def test_each_patch_names_the_versions_it_was_written_for_and_its_decision_record(patch):
    assert patch.WRITTEN_FOR and all(patch.WRITTEN_FOR.values())
    assert patch.RECORD.startswith("docs/decisions/")


def test_the_refusal_names_the_library_the_installed_and_expected_versions_and_what_to_do(installed):
    installed(celery="5.8.0")
    with pytest.raises(PatchVersionError) as refused:
        broker_outage.check()
    message = str(refused.value)
    assert "patches/broker_outage.py" in message
    assert "celery 5.8.0 is installed" in message
    assert "written for celery 5.7.0" in message
    assert "requirements.txt" in message and "docs/decisions/0001-broker-outage-patch.md" in message


@pytest.mark.parametrize("library", ["celery", "kombu"])
def test_the_broker_outage_patch_refuses_another_celery_or_kombu_before_adding_its_bootstep(installed, library):
    installed(**{library: "5.7.1"})
    app = Celery("refused", fixups=[], set_as_current=False)
    with pytest.raises(PatchVersionError, match=f"{library} 5.7.1 is installed"):
        broker_outage.apply(app)
    assert not app.steps["consumer"]


def test_the_task_connections_patch_refuses_another_celery(installed):
    installed(celery="5.6.3")
    with pytest.raises(PatchVersionError, match="celery 5.6.3 is installed"):
        task_connections.apply(Celery("refused", fixups=[], set_as_current=False))


def test_a_celery_app_with_the_patches_is_not_created_on_another_celery(installed):
    installed(celery="5.8.0")
    with pytest.raises(PatchVersionError, match="celery 5.8.0 is installed"):
        Celery("refused", fixups=["patches:apply_celery"], set_as_current=False)


@pytest.mark.parametrize("library, version", [("Django", "6.0"), ("gunicorn", "27.1.0"), ("gevent", "25.9.1")])
def test_the_greenlet_connections_patch_refuses_another_django_gunicorn_or_gevent_before_patching(
        installed, library, version):
    installed(**{library: version})
    store, serve = connections._connections, object()
    worker = SimpleNamespace(handle=serve)
    with pytest.raises(PatchVersionError, match=f"{library} {version} is installed"):
        greenlet_connections.apply(worker)
    assert connections._connections is store
    assert worker.handle is serve


def test_a_gevent_web_worker_refuses_another_gunicorn_before_making_psycopg2_cooperative(installed):
    installed(gunicorn="28.0.0")
    with pytest.raises(PatchVersionError, match="gunicorn 28.0.0 is installed"):
        patches.apply_gevent_worker(SimpleNamespace(handle=object()))
    assert psycopg2.extensions.get_wait_callback() is None


def test_a_library_that_is_not_installed_is_refused(installed):
    installed(kombu=None)
    with pytest.raises(PatchVersionError, match="kombu is not installed"):
        broker_outage.check()


def _run_with_installed(tmp_path, fake: dict, main: str, *argv: str) -> subprocess.CompletedProcess:
    """Run a service's real entry point (`main`: "module:function") in a process whose guard sees
    the `fake` versions; it is given 60 s to refuse, more than a refusal needs."""
    code = ("import sys; from importlib import import_module; from patches import versions; "
            f"real = versions.installed; fake = {fake!r}; "
            "versions.installed = lambda name: fake[name] if name in fake else real(name); "
            f"module, _, function = {main!r}.partition(':'); sys.argv = [module] + {list(argv)!r}; "
            "sys.exit(getattr(import_module(module), function)())")
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, env=stack_env(tmp_path), capture_output=True,
                          text=True, timeout=60)


def test_a_celery_worker_refuses_to_start_on_another_kombu(tmp_path):
    run = _run_with_installed(tmp_path, {"kombu": "5.8.0"}, "celery.__main__:main", "-A", "botmanager", "worker")
    assert run.returncode != 0
    assert "PatchVersionError" in run.stderr and "kombu 5.8.0 is installed" in run.stderr


def test_the_gevent_web_refuses_to_start_on_another_gevent(tmp_path):
    run = _run_with_installed(tmp_path, {"gevent": "26.10.0"}, "gunicorn.app.wsgiapp:run",
                              "-c", "python:botmanager.gunicorn_conf", "botmanager.wsgi", "--workers", "1",
                              "--worker-class", "gevent", "--bind", "127.0.0.1:0")
    assert run.returncode != 0
    output = run.stdout + run.stderr
    assert "PatchVersionError" in output and "gevent 26.10.0 is installed" in output


@pytest.mark.parametrize("version, expected, ok", [
    ("5.7.0", "5.7.0", True), ("5.7.1", "5.7.0", False), ("5.7.0.post1", "5.7.0", False),
    ("5.2.19", "5.2.*", True), ("5.2", "5.2.*", True), ("5.20.1", "5.2.*", False), ("5.3.0", "5.2.*", False),
])
def test_a_version_matches_an_exact_release_or_a_series(version, expected, ok):
    assert versions.matches(version, expected) is ok
