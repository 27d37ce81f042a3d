"""The README is the front door and docs/ the rooms behind it: what they say about configuration is
checked against the code, and every link between them leads somewhere (the curl session itself runs
against `make run` in tests/test_runstack.py)."""
from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
CONFIGURATION = REPO / "docs" / "configuration.md"
PAGES = sorted([README, *(REPO / "docs").rglob("*.md")])
# How settings.py reads the environment: its helpers, a secret (environment or secrets.json) and the
# raw mapping. A new way of reading a variable must be added here, or the test below misses it.
READERS = re.compile(r"""\b(?:_str|_int|_float|_bool|_secret)\(\s*["']([A-Z][A-Z0-9_]*)["']"""
                     r"""|\b_env(?:\.get\(\s*|\[\s*)["']([A-Z][A-Z0-9_]*)["']""")
VARIABLE_TABLE = re.compile(r"\|\s*variable\s*\|")


def variables_settings_reads() -> set[str]:
    source = (REPO / "botmanager" / "settings.py").read_text()
    return {a or b for a, b in READERS.findall(source)}


def variables_documented_in(page: Path) -> set[str]:
    """The names in the first column of every `| variable | default | meaning |` table of a page."""
    names, in_table = set(), False
    for line in page.read_text().splitlines():
        if VARIABLE_TABLE.match(line):
            in_table = True
        elif in_table and line.startswith("|"):
            names |= set(re.findall(r"`([A-Z][A-Z0-9_]*)`", line.split("|")[1]))
        else:
            in_table = False
    return names


def test_the_readers_are_found_in_settings():
    # Guards the parser itself: these are read in three different ways.
    assert {"PORT", "SECRET_KEY", "DATABASE_URL", "DEBUG", "ORCHESTRATOR_TIMEOUT_SECONDS"} <= variables_settings_reads()


def test_the_table_parser_finds_the_tables_of_every_section_of_the_configuration_page():
    # Guards the parser: one variable of each table (general, rate limits, Docker, Nomad, Kubernetes).
    assert {"DEBUG", "API_RATE_LIMIT_PER_SECOND", "BOT_IMAGE", "NOMAD_ADDR",
            "KUBERNETES_NAMESPACE"} <= variables_documented_in(CONFIGURATION)


def test_every_variable_settings_reads_is_in_a_table_of_the_configuration_page():
    missing = variables_settings_reads() - variables_documented_in(CONFIGURATION)
    assert not missing, f"add a row to a table of docs/configuration.md for: {sorted(missing)}"


def test_the_configuration_page_documents_no_variable_settings_does_not_read():
    stale = variables_documented_in(CONFIGURATION) - variables_settings_reads()
    assert not stale, f"docs/configuration.md documents variables nothing reads: {sorted(stale)}"


def test_no_other_page_has_a_variable_table():
    # A table elsewhere would go unchecked: the settings are listed in one place, linked from others.
    elsewhere = [str(page.relative_to(REPO)) for page in PAGES
                 if page != CONFIGURATION and any(VARIABLE_TABLE.match(line) for line in page.read_text().splitlines())]
    assert not elsewhere, f"move these `| variable |` tables to docs/configuration.md: {elsewhere}"


def _anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    anchors, in_code = set(), False
    for line in page.read_text().splitlines():
        if line.startswith("```"):
            in_code = not in_code
        elif not in_code and (heading := re.match(r"#{1,6} (.*)", line)):
            anchors.add(_anchor(heading.group(1)))
    return anchors


def test_every_link_between_the_pages_leads_to_a_file_and_heading_that_exist():
    broken = []
    for page in PAGES:
        for target, anchor in re.findall(r"\]\(([^)#:\s]*)(?:#([^)\s]+))?\)", page.read_text()):
            path = (page.parent / target).resolve() if target else page
            if not path.exists():
                broken.append(f"{page.relative_to(REPO)}: {target}")
            elif anchor and path.suffix == ".md" and anchor not in _anchors(path):
                broken.append(f"{page.relative_to(REPO)}: {target}#{anchor}")
    assert not broken, f"links to nothing: {broken}"


def test_the_readme_stays_a_front_door():
    # The rest belongs in docs/: the README says what botmanager is, the two commands, the curl
    # session, the map of the code and where to read on.
    assert len(README.read_text().splitlines()) <= 250


def test_every_docs_page_the_code_names_exists():
    # Docstrings, error messages and scripts send readers to docs/ pages: a moved page breaks them.
    named = set()
    for pattern in ("*.py", "*.sh", "*.yml", "Makefile"):
        for source in REPO.rglob(pattern):
            if not {".venv", ".run", ".git", "node_modules"} & set(source.relative_to(REPO).parts):
                named |= {(str(source.relative_to(REPO)), page)
                          for page in re.findall(r"\bdocs/[\w./-]*\w\.md", source.read_text(errors="replace"))}
    missing = sorted((source, page) for source, page in named if not (REPO / page).exists())
    assert named and not missing, f"pages named in the code that do not exist: {missing}"
