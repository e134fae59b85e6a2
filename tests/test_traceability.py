"""docs/security-traceability.md names, for every requirement id of SECURITY.md, tests that
exist: an id missing from the table, or a named test that is not there, fails here."""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SECURITY = REPO.parent / "shared" / "SECURITY.md"
TABLE = REPO / "docs" / "security-traceability.md"
_ID = re.compile(r"^- ([A-Z]\d+) ", re.MULTILINE)
# "Requirements being built": bold until the threat model counts them; the table may name them.
_BUILDING = re.compile(r"^- \*\*([A-Z]\d+)\*\* ", re.MULTILINE)
_ROW = re.compile(r"^\|\s*([A-Z]\d+)\s*\|(.*)\|\s*$", re.MULTILINE)
_TEST = re.compile(r"`(tests/[\w/]+\.py)::(\w+)`")


def requirement_ids() -> list[str]:
    return _ID.findall(SECURITY.read_text(encoding="utf-8"))


def building_ids() -> list[str]:
    return _BUILDING.findall(SECURITY.read_text(encoding="utf-8"))


def table() -> dict[str, list[tuple[str, str]]]:
    """id -> [(file, function)] from the table's rows."""
    return {row_id: _TEST.findall(cells)
            for row_id, cells in _ROW.findall(TABLE.read_text(encoding="utf-8"))}


def defined_tests(file: str) -> set[str]:
    tree = ast.parse((REPO / file).read_text(encoding="utf-8"))
    return {node.name for node in tree.body
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
            and node.name.startswith("test_")}


def test_security_md_lists_the_requirement_ids() -> None:
    ids = requirement_ids()
    assert len(ids) == len(set(ids)) == 21, ids
    for expected in ("S1", "F4", "A4", "E3", "R1", "L5"):
        assert expected in ids


def test_every_requirement_has_tests_in_the_table() -> None:
    rows = table()
    missing = [i for i in requirement_ids() if not rows.get(i)]
    assert missing == [], f"no tests named for {missing} in {TABLE.name}"
    unknown = sorted(set(rows) - set(requirement_ids()) - set(building_ids()))
    assert unknown == [], f"{TABLE.name} names ids SECURITY.md does not have: {unknown}"


def test_every_named_test_exists() -> None:
    absent = []
    for row_id, tests in table().items():
        for file, function in tests:
            if not (REPO / file).is_file() or function not in defined_tests(file):
                absent.append(f"{row_id}: {file}::{function}")
    assert absent == [], "named tests that do not exist:\n" + "\n".join(absent)


def test_the_readme_links_the_table() -> None:
    assert "docs/security-traceability.md" in (REPO / "README.md").read_text(encoding="utf-8")
