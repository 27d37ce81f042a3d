"""The direction of the house: every contract in `.importlinter` holds (layers from the local
tooling down to the building blocks; inside meetings, from the routes down to the lifecycle
core; the core free of the web framework). `lint-imports` prints what breaks one."""
from __future__ import annotations

import configparser
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / ".importlinter"
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _contracts() -> list[str]:
    parser = configparser.ConfigParser()
    parser.read(CONFIG)
    return [section.split(":", 2)[2] for section in parser.sections() if section.startswith("importlinter:contract:")]


def _lint(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(LINT_IMPORTS), "--no-cache", "--no-logo", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("contract", _contracts())
def test_the_import_contract_holds(contract):
    done = _lint("--config", str(CONFIG), "--contract", contract)

    assert done.returncode == 0, done.stdout + done.stderr


def test_an_import_against_the_direction_is_reported(tmp_path):
    # The linter reads the real imports: with the building blocks put above the apps, the apps'
    # imports of them break the contract.
    inverted = tmp_path / "inverted.ini"
    inverted.write_text("[importlinter]\nroot_packages =\n    meetings\n    common\n\n"
                        "[importlinter:contract:inverted]\nname = inverted\ntype = layers\n"
                        "layers =\n    common\n    meetings\n")

    done = _lint("--config", str(inverted))

    assert done.returncode != 0
    assert "meetings is not allowed to import common" in done.stdout
