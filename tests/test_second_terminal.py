"""What someone meets in a second terminal next to `make run`: the credentials it kept in RUN_DIR,
the ports it shares through RUN_DIR/runstack.env, and a `manage.py` that says in one line what to
do when PostgreSQL is not where it looks. (With a live `make run`: tests/test_runstack.py.)"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from devstack import run as runstack, stackinfo
from tests.support import a_new_terminal

REPO = Path(__file__).resolve().parents[1]


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # nobody listens once the socket is closed


def _manage_py(run_dir: Path, *args: str, **variables: str) -> subprocess.CompletedProcess:
    """manage.py typed in a new terminal."""
    return subprocess.run([sys.executable, "manage.py", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=60, env=a_new_terminal(RUN_DIR=str(run_dir), **variables))


# --- credentials.env ------------------------------------------------------------------------------
@pytest.mark.django_db
def test_make_run_keeps_the_demo_key_and_the_admin_login_in_a_private_file(tmp_path):
    from accounts import services
    from accounts.models import User

    runstack._bootstrap_accounts(tmp_path)

    file = tmp_path / "credentials.env"
    assert file.stat().st_mode & 0o777 == 0o600
    kept = stackinfo.read_credentials(tmp_path)
    assert services.user_for_token(kept["DEMO_API_KEY"]).email == kept["DEMO_EMAIL"] == "demo@example.com"
    admin = User.objects.get(email=kept["ADMIN_EMAIL"])
    assert admin.is_superuser and admin.check_password(kept["ADMIN_PASSWORD"])


@pytest.mark.django_db
def test_the_next_start_keeps_the_key_and_prints_where_it_is_not_what_it_is(tmp_path):
    runstack._bootstrap_accounts(tmp_path)
    first = stackinfo.read_credentials(tmp_path)

    banner = "\n".join(runstack._bootstrap_accounts(tmp_path))

    assert stackinfo.read_credentials(tmp_path) == first
    assert first["DEMO_API_KEY"] not in banner and first["ADMIN_PASSWORD"] not in banner
    assert str(tmp_path / "credentials.env") in banner


@pytest.mark.django_db
def test_a_revoked_demo_key_is_replaced_at_the_next_start(tmp_path):
    from accounts import services
    from accounts.models import APIToken

    runstack._bootstrap_accounts(tmp_path)
    old = stackinfo.read_credentials(tmp_path)["DEMO_API_KEY"]
    services.revoke_token(APIToken.objects.get(prefix=old[:10]).pk)

    banner = "\n".join(runstack._bootstrap_accounts(tmp_path))

    new = stackinfo.read_credentials(tmp_path)["DEMO_API_KEY"]
    assert new != old and services.user_for_token(new).email == "demo@example.com"
    assert f"X-API-Key: {new}" in banner


@pytest.mark.django_db
def test_a_changed_admin_password_leaves_the_file_and_the_banner_says_how_to_set_one(tmp_path):
    from accounts.models import User

    runstack._bootstrap_accounts(tmp_path)
    admin = User.objects.get(email="admin@example.com")
    admin.set_password("a password chosen by hand")
    admin.save()

    banner = "\n".join(runstack._bootstrap_accounts(tmp_path))

    assert "ADMIN_PASSWORD" not in stackinfo.read_credentials(tmp_path)
    assert "manage.py changepassword admin@example.com" in banner


# --- runstack.env ---------------------------------------------------------------------------------
def _record_running_stack(run_dir: Path, external_urls: tuple[str, ...] = (), **values: object) -> None:
    """runstack.env as a `make run` would write it; this very process (alive) plays that make run."""
    stackinfo.write(run_dir, values, external_urls=list(external_urls))


def test_the_settings_of_a_running_make_run_are_shared(tmp_path):
    _record_running_stack(tmp_path, PORT=8123, EMBEDDED_POSTGRES_PORT=5555, ORCHESTRATOR="docker")

    assert stackinfo.shared_settings(tmp_path) == {"PORT": "8123", "EMBEDDED_POSTGRES_PORT": "5555",
                                                   "ORCHESTRATOR": "docker"}


def test_the_file_of_a_make_run_that_is_gone_is_ignored(tmp_path):
    _record_running_stack(tmp_path, EMBEDDED_POSTGRES_PORT=5555)
    recorded = stackinfo.path(tmp_path).read_text()
    # The same pid with another start time: the process that wrote it is gone (the pid reused).
    stale = recorded.replace(f"{stackinfo.START}={stackinfo.start_time(os.getpid())}", f"{stackinfo.START}=1")
    stackinfo.path(tmp_path).write_text(stale)

    assert stackinfo.shared_settings(tmp_path) == {}


def test_only_the_make_run_that_wrote_the_file_removes_it(tmp_path):
    _record_running_stack(tmp_path, PORT=8123)
    stackinfo.path(tmp_path).write_text(stackinfo.path(tmp_path).read_text().replace(
        f"{stackinfo.PID}={os.getpid()}", f"{stackinfo.PID}=1"))

    stackinfo.remove(tmp_path)

    assert stackinfo.path(tmp_path).exists()


# --- manage.py when PostgreSQL is not there -------------------------------------------------------
def test_manage_py_says_in_one_line_what_to_do_when_no_stack_runs(tmp_path):
    port = _closed_port()

    result = _manage_py(tmp_path, "create_token", "demo@example.com", EMBEDDED_POSTGRES_PORT=str(port))

    assert result.returncode == 1
    assert result.stdout == "" and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert result.stderr.startswith(f"manage.py: cannot reach PostgreSQL at 127.0.0.1:{port} (Connection refused) "
                                    f"with RUN_DIR={tmp_path.resolve()}, where no `make run` is running.")
    assert "Start the stack with `make run`" in result.stderr


def test_manage_py_looks_where_the_running_make_run_of_its_run_dir_is(tmp_path):
    port = _closed_port()
    _record_running_stack(tmp_path, EMBEDDED_POSTGRES_PORT=port)

    result = _manage_py(tmp_path, "create_token", "demo@example.com")  # no port in this terminal

    assert result.returncode == 1
    assert f"cannot reach PostgreSQL at 127.0.0.1:{port} " in result.stderr
    assert f"whose `make run` (pid {os.getpid()}) does not answer there" in result.stderr


def test_manage_py_names_the_port_the_running_make_run_uses_when_this_terminal_exports_another(tmp_path):
    ours, theirs = _closed_port(), _closed_port()
    _record_running_stack(tmp_path, EMBEDDED_POSTGRES_PORT=theirs)

    result = _manage_py(tmp_path, "create_token", "demo@example.com", EMBEDDED_POSTGRES_PORT=str(ours))

    assert result.returncode == 1
    assert (f"uses EMBEDDED_POSTGRES_PORT={theirs} (this terminal exports {ours}). Unset EMBEDDED_POSTGRES_PORT"
            in result.stderr)


def test_manage_py_asks_for_the_database_url_the_running_make_run_was_given(tmp_path):
    _record_running_stack(tmp_path, external_urls=("DATABASE_URL",), EMBEDDED_POSTGRES_PORT=_closed_port())

    result = _manage_py(tmp_path, "create_token", "demo@example.com")

    assert result.returncode == 1
    assert (f"whose `make run` (pid {os.getpid()}) was given a DATABASE_URL. Export the same DATABASE_URL in "
            f"this terminal." in result.stderr)
