"""The README is the front door: what it says about configuration and the quick start is checked
against the code (the curl session itself runs against `make run` in tests/test_runstack.py)."""
from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()
# How settings.py reads the environment: its helpers, a secret (environment or secrets.json) and the
# raw mapping. A new way of reading a variable must be added here, or the test below misses it.
READERS = re.compile(r"""\b(?:_str|_int|_float|_bool|_secret)\(\s*["']([A-Z][A-Z0-9_]*)["']"""
                     r"""|\b_env(?:\.get\(\s*|\[\s*)["']([A-Z][A-Z0-9_]*)["']""")


def variables_settings_reads() -> set[str]:
    source = (REPO / "botmanager" / "settings.py").read_text()
    return {a or b for a, b in READERS.findall(source)}


def variables_the_readme_documents() -> set[str]:
    """The names in the first column of every `| variable | default | meaning |` table (the
    Configuration section's and those of the Docker and Nomad backends)."""
    names, in_table = set(), False
    for line in README.splitlines():
        if re.match(r"\|\s*variable\s*\|", line):
            in_table = True
        elif in_table and line.startswith("|"):
            names |= set(re.findall(r"`([A-Z][A-Z0-9_]*)`", line.split("|")[1]))
        else:
            in_table = False
    return names


def test_the_readers_are_found_in_settings():
    # Guards the parser itself: these are read in three different ways.
    assert {"PORT", "SECRET_KEY", "DATABASE_URL", "DEBUG", "ORCHESTRATOR_TIMEOUT_SECONDS"} <= variables_settings_reads()


def test_every_variable_settings_reads_is_in_a_configuration_table_of_the_readme():
    missing = variables_settings_reads() - variables_the_readme_documents()
    assert not missing, f"add a row to the README's Configuration table for: {sorted(missing)}"


def test_the_readme_documents_no_variable_settings_does_not_read():
    stale = variables_the_readme_documents() - variables_settings_reads()
    assert not stale, f"the README documents variables nothing reads: {sorted(stale)}"
