"""The secrets file never enters an image: users write a `botmanager.env` (docs/operations.md says
outside the repository; a copy inside happens), and the service image does `COPY . /app`. Built for
real from the repository's own context and .dockerignore, with secrets planted where a user or the
local stack puts them, by both ways this tree's images are built: the docker CLI (`docker build`,
`make docker-build-check`) and the docker SDK (what docker-compose v1 builds with). `FROM scratch`:
nothing to pull.
"""
from __future__ import annotations

import io
import shutil
import subprocess
import tarfile
import uuid
from pathlib import Path

import pytest

from tests.orchestrators.conftest import REPO

# Where secrets land: the documented env file (and a backup of it), a dotenv, the embedded stack's
# RUN_DIR secrets, an env file and a key in a package directory.
PLANTED = ("botmanager.env", "botmanager.env.bak", ".env", ".run/secrets.json", "accounts/local.env",
           "botmanager/tls.key")
# What the service image needs must still be there.
NEEDED = ("manage.py", "requirements.txt", "botmanager/settings.py", "orchestrators/docker_readonly_proxy.py",
          "simbot/bot.py")


@pytest.fixture
def planted():
    made = []
    for relative in PLANTED:
        path = REPO / relative
        if path.exists():
            continue  # a real one of the developer's: never overwritten nor removed
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("SECRET_KEY=planted-by-the-build-context-test\n")
        made.append(path)
    yield
    for path in made:
        path.unlink()


def _context_files(docker_client, image: str) -> set[str]:
    container = docker_client.containers.create(image, command=["none"])
    try:
        stream, _ = container.get_archive("/ctx")
        with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as archive:
            return {name.removeprefix("ctx/") for name in archive.getnames()}
    finally:
        container.remove(force=True)


def _build_with_cli(image: str, dockerfile: Path) -> None:
    if shutil.which("docker") is None:
        pytest.skip("no docker CLI")
    result = subprocess.run(["docker", "build", "-q", "-f", str(dockerfile), "-t", image, str(REPO)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def _build_with_sdk(docker_client, image: str, dockerfile: Path) -> None:
    docker_client.images.build(path=str(REPO), dockerfile=str(dockerfile), tag=image, rm=True)


@pytest.mark.docker
@pytest.mark.parametrize("builder", ["cli", "sdk"])
def test_no_planted_secret_reaches_an_image_built_from_the_repository(builder, planted, docker_client, tmp_path):
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text("FROM scratch\nCOPY . /ctx\n")
    image = f"botmanager-context-test:{uuid.uuid4().hex[:10]}"
    try:
        if builder == "cli":
            _build_with_cli(image, dockerfile)
        else:
            _build_with_sdk(docker_client, image, dockerfile)
        files = _context_files(docker_client, image)
    finally:
        if docker_client.images.list(image):
            docker_client.images.remove(image, force=True)

    assert set(NEEDED) <= files
    assert not {relative for relative in PLANTED if relative in files}
    assert not {name for name in files if name.startswith((".run/", ".git/", ".venv"))}
