"""Each third-party library is imported by one module: that module is its seam."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "mailagent"

SEAMS = {
    "imapclient": {"mailbox.py"},
    "aiosmtplib": {"notify.py"},
    "anthropic": {"agent.py"},
    "mailparser": {"intake.py"},
    "dkim": {"intake.py"},
    "authres": {"intake.py"},
    "sqlmodel": {"store/__init__.py", "store/tables.py", "store/schedules.py",
                 "store/canary.py", "store/progress.py", "store/repair.py", "store/held.py",
                 "store/halts.py"},
    "sqlalchemy": {"store/__init__.py", "store/tables.py", "store/repair.py"},
    "jinja2": {"render.py"},
    "markdown_it": {"render.py"},
    "markupsafe": {"render.py"},
    "schedule": {"scheduler.py"},
    "pypdf": {"tools/documents.py"},
    "docx": {"tools/documents.py"},
    "openpyxl": {"tools/documents.py"},
    "aiosmtpd": {"demo_mail.py"},
    "pymap": {"demo_mail.py"},
    "proxyprotocol": {"demo_mail.py"},
    "keyring": {"keystore.py"},
    "httpx": {"oauth.py"},
    "rich": {"status_view.py"},
    "mcp": {"connectors.py"},
    "httpx2": {"connectors.py"},
    "regex": {"tools/files.py"},
}


def imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            roots.add(node.module.split(".")[0])
    return roots


def test_each_library_is_imported_only_by_its_seam() -> None:
    found: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        for root in imported_roots(path) & SEAMS.keys():
            found.setdefault(root, set()).add(str(path.relative_to(PACKAGE)))
    for library, modules in found.items():
        assert modules <= SEAMS[library], f"{library} imported by {modules - SEAMS[library]}"
    assert "anthropic" in found and "imapclient" in found


def test_only_config_reads_the_environment() -> None:
    readers = {str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py")
               if "os.environ" in p.read_text() or "getenv" in p.read_text()}
    assert readers == {"config.py"}
