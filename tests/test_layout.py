"""Each third-party library is imported by one module: that module is its seam. Tests share
code through tests/support, never by importing each other, and its modules stay small."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "mailagent"


def package_modules() -> list[Path]:
    """mailagent's modules. Not the scripts of examples/ (the example skill's): they are
    shipped files that the agent runs in its sandbox, never imported by mailagent."""
    return [p for p in PACKAGE.rglob("*.py") if p.relative_to(PACKAGE).parts[0] != "examples"]

SEAMS = {
    "imapclient": {"mail/mailbox.py"},
    "aiosmtplib": {"mail/notify.py"},
    "anthropic": {"agent/"},
    "mailparser": {"mail/intake.py"},
    "dkim": {"mail/intake.py"},
    "authres": {"mail/intake.py"},
    # The store is one seam of many modules, one per area; nothing outside it touches the ORM.
    "sqlmodel": {"store/"},
    "sqlalchemy": {"store/"},
    "jinja2": {"mail/render.py"},
    "markdown_it": {"mail/markdown.py"},
    "markupsafe": {"mail/render.py"},
    "schedule": {"tasks/scheduler.py"},
    "pypdf": {"tools/documents.py"},
    "docx": {"tools/documents.py"},
    "openpyxl": {"tools/documents.py"},
    "aiosmtpd": {"cli/demo_mail.py"},
    "pymap": {"cli/demo_mail.py"},
    "proxyprotocol": {"cli/demo_mail.py"},
    "keyring": {"keystore.py"},
    "httpx": {"mail/oauth.py"},
    "rich": {"cli/status_view.py"},
    "mcp": {"tools/mcp_servers.py"},
    "httpx2": {"tools/mcp_servers.py"},
    "regex": {"tools/files.py"},
    "jsonschema": {"tools/mcp_servers.py"},
    "PIL": {"tools/media.py"},
    "pillow_heif": {"tools/media.py"},
    "icalendar": {"tools/cards.py"},
    "vobject": {"tools/cards.py"},
    "yaml": {"policy/skills.py"},
}

# Libraries the waiting daemon does without: imported where a task, a tool, a configured
# connector or a person at a terminal first needs them, never when a module is loaded.
LOADED_WHEN_NEEDED = ("anthropic", "mcp", "pypdf", "docx", "openpyxl", "rich", "httpx", "httpx2",
                      "jsonschema", "aiosmtpd", "pymap", "PIL", "pillow_heif", "icalendar",
                      "vobject", "yaml")


def imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            roots.add(node.module.split(".")[0])
    return roots


def is_in(module: str, seam: str) -> bool:
    """A seam is a module, or a folder (ending in /) all of whose modules are the seam."""
    return module.startswith(seam) if seam.endswith("/") else module == seam


def test_each_library_is_imported_only_by_its_seam() -> None:
    found: dict[str, set[str]] = {}
    for path in package_modules():
        for root in imported_roots(path) & SEAMS.keys():
            found.setdefault(root, set()).add(str(path.relative_to(PACKAGE)))
    for library, modules in found.items():
        strays = {m for m in modules if not any(is_in(m, seam) for seam in SEAMS[library])}
        assert not strays, f"{library} imported by {strays}"
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
    # By the code, not the text: a program that a sandbox runs (its launcher, a string) is
    # not the service reading its own environment.
    readers = {str(p.relative_to(PACKAGE)) for p in package_modules()
               if reads_environment(ast.parse(p.read_text()))}
    assert readers == {"config.py"}


def reads_environment(tree: ast.AST) -> bool:
    names = {"environ", "environb", "getenv", "getenvb"}
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in names \
                and isinstance(node.value, ast.Name) and node.value.id == "os":
            return True
        if isinstance(node, ast.ImportFrom) and node.module == "os" \
                and any(alias.name in names for alias in node.names):
            return True
    return False


def test_the_daemon_loads_no_library_that_only_a_task_or_a_person_needs() -> None:
    modules = [f"mailagent.{'.'.join(p.relative_to(PACKAGE).with_suffix('').parts)}"
               for p in package_modules() if p.name not in ("__init__.py", "__main__.py")
               and p.name != "demo_mail.py"]  # the demo's own servers: `mailagent demo` only
    lazy = set(LOADED_WHEN_NEEDED)
    code = (f"import sys\nfor m in {modules!r}: __import__(m)\n"
            f"print(sorted({{n.split('.')[0] for n in sys.modules}} & {lazy!r}))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120, check=True)
    assert result.stdout.strip() == "[]", result.stdout


# The layers, top down: each imports only from the layers below it (and its own folder).
# A person at a terminal; the daemon that wires the stages; the stages of the flow; the store;
# the ground every layer stands on.
LAYERS = (
    ("cli", "__main__"),
    ("service", "deployment"),
    ("mail", "tasks", "agent", "tools", "policy"),
    ("store",),
    ("config", "settings", "errors", "content", "failpoints", "addresses", "providers",
     "keystore", "instance", "bell", "__init__"),
)
# Modules of more than MAX_LINES that are flat catalogues (a table, not logic): none today.
MAX_LINES = 500
CATALOGUES: set[str] = set()


def area_of(module: str) -> str:
    """The top-level folder or module of `mailagent.a.b` (or of a path relative to the package)."""
    return module.removeprefix("mailagent.").split(".")[0]


def layer_of(area: str) -> int:
    return next(index for index, areas in enumerate(LAYERS) if area in areas)


def internal_imports(path: Path) -> set[str]:
    """The mailagent modules that `path` imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("mailagent.")}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            if node.module == "mailagent":
                found |= {f"mailagent.{a.name}" for a in node.names}
            elif node.module.startswith("mailagent."):
                found.add(node.module)
    return found


def test_every_module_has_a_layer() -> None:
    for path in package_modules():
        area = path.relative_to(PACKAGE).parts[0].removesuffix(".py")
        assert any(area in areas for areas in LAYERS), f"{area} is in no layer of LAYERS"


def test_imports_point_one_way_cli_service_stages_store() -> None:
    upward = []
    for path in package_modules():
        area = path.relative_to(PACKAGE).parts[0].removesuffix(".py")
        for imported in internal_imports(path):
            if imported == "mailagent.__version__":
                continue
            target = area_of(imported)
            if layer_of(target) < layer_of(area):
                upward.append(f"{path.relative_to(PACKAGE)} imports {imported}")
    assert upward == []


def test_no_module_is_over_500_lines_but_flat_catalogues() -> None:
    long = {str(p.relative_to(PACKAGE)): n for p in package_modules()
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert set(long) <= CATALOGUES, long
