"""Each third-party library is imported by one module: that module is its seam. Tests share
code through tests/support, never by importing each other, and its modules stay small."""

from __future__ import annotations

import ast
import subprocess
import sys
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
    "jsonschema": {"connectors.py"},
}

# Libraries the waiting daemon does without: imported where a task, a tool, a configured
# connector or a person at a terminal first needs them, never when a module is loaded.
LOADED_WHEN_NEEDED = ("anthropic", "mcp", "pypdf", "docx", "openpyxl", "rich", "httpx",
                      "jsonschema", "aiosmtpd", "pymap")


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


TESTS = Path(__file__).resolve().parent


def imported_modules(path: Path) -> set[str]:
    """The dotted names ``path`` imports (``from a import b`` gives ``a`` and ``a.b``),
    relative imports resolved against its package under tests/."""
    package = ["tests", *path.parent.relative_to(TESTS).parts]
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            names |= {module, *(f"{module}.{alias.name}" for alias in node.names)}
    return names


def is_test_file(module: str) -> bool:
    parts = module.split(".")
    return (parts[0] == "tests" and parts[-1].startswith("test_")
            and TESTS.joinpath(*parts[1:]).with_suffix(".py").is_file())


def test_no_test_file_imports_another() -> None:
    imports = {str(path.relative_to(TESTS)): sorted(filter(is_test_file, imported_modules(path)))
               for path in TESTS.rglob("*.py")}
    assert {path: modules for path, modules in imports.items() if modules} == {}


def test_no_support_module_is_over_500_lines() -> None:
    lengths = {path.name: len(path.read_text().splitlines())
               for path in (TESTS / "support").glob("*.py")}
    assert {name: lines for name, lines in lengths.items() if lines > 500} == {}


def test_only_config_reads_the_environment() -> None:
    readers = {str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py")
               if "os.environ" in p.read_text() or "getenv" in p.read_text()}
    assert readers == {"config.py"}


def test_the_daemon_loads_no_library_that_only_a_task_or_a_person_needs() -> None:
    modules = [f"mailagent.{'.'.join(p.relative_to(PACKAGE).with_suffix('').parts)}"
               for p in PACKAGE.rglob("*.py") if p.name not in ("__init__.py", "__main__.py")
               and p.name != "demo_mail.py"]  # the demo's own servers: `mailagent demo` only
    lazy = set(LOADED_WHEN_NEEDED)
    code = (f"import sys\nfor m in {modules!r}: __import__(m)\n"
            f"print(sorted({{n.split('.')[0] for n in sys.modules}} & {lazy!r}))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120, check=True)
    assert result.stdout.strip() == "[]", result.stdout
