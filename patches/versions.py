"""The guard every patch runs before it applies: the installed library is a version it was written
for, or the process refuses to start.

A patch of a library's internals is only known to be right for the releases it was read and
tested against; on another one it may silently do nothing, or break what it meant to fix. So each
patch module names them (`WRITTEN_FOR = {"celery": ("5.7.0",)}`; `"5.2.*"` is any 5.2 release)
and `require()` raises `PatchVersionError` before anything is patched.
"""
from __future__ import annotations

from importlib import metadata

HOW = ("read the patch's decision record and check whether this release still needs the patch "
       "and still has the internals it replaces; then update the patch, its WRITTEN_FOR and the pin "
       "in requirements.txt together (or remove the patch), or install the pinned version with "
       "`pip install -r requirements.txt`")


class PatchVersionError(RuntimeError):
    """An installed library is not a version a patch of its internals was written for."""


def installed(distribution: str) -> str | None:
    """The installed version of `distribution` (its name on PyPI), None when it is not installed."""
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def matches(version: str, expected: str) -> bool:
    """`version` is `expected` ("5.7.0"), or within its series ("5.2.*": 5.2, 5.2.19...)."""
    if expected.endswith(".*"):
        series = expected[:-2]
        return version == series or version.startswith(series + ".")
    return version == expected


def require(patch: str, record: str, written_for: dict[str, tuple[str, ...]]) -> None:
    """Raise PatchVersionError unless every library in `written_for` is installed at one of the
    versions listed for it. `patch` names the module, `record` its decision record."""
    for distribution, expected in written_for.items():
        version = installed(distribution)
        if version is None or not any(matches(version, e) for e in expected):
            found = f"{distribution} {version} is installed" if version else f"{distribution} is not installed"
            raise PatchVersionError(
                f"{patch} patches the internals of {distribution} and was written for "
                f"{distribution} {' or '.join(expected)}, but {found}; refusing to start. To go on, "
                f"{HOW} ({record}).")
