"""mailagent as a user installs it: the wheel built from this tree, installed with pipx into a
fresh environment outside the source tree, and run from a folder where the sources cannot be
imported. Tests of the installed program use only `Installed.run`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

SOURCE = Path(__file__).resolve().parents[2]
# Variables that would let the installed program see the sources or the test environment.
LEAKY = ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "MAILAGENT_CONFIG", "MAILAGENT_INSTALLED",
         "ANTHROPIC_API_KEY",
         "ANTHROPIC_BASE_URL", "PIPX_HOME", "PIPX_BIN_DIR", "PIPX_MAN_DIR")


LEFTOVERS = (".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".mypy_cache",
             ".ruff_cache", ".hypothesis", "bench.json")


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in LEAKY}
    return {**env, **extra}


@dataclass(frozen=True)
class Installed:
    root: Path  # everything of this install lives under here
    wheel: Path
    bin: Path  # the `mailagent` command pipx put on the PATH

    @property
    def home(self) -> Path:
        return self.root / "home"

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        """The environment a user's shell gives the installed program, plus `extra`."""
        base = clean_env(HOME=str(self.home), PATH=f"{self.bin.parent}{os.pathsep}"
                         f"{os.environ.get('PATH', '')}")
        return {**base, **(extra or {})}

    def run(self, *args: str, env: dict[str, str] | None = None, input: str | None = None,
            timeout: float = 120, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        """`mailagent ARGS` as a user types it, from a folder outside the source tree."""
        return subprocess.run([str(self.bin), *args], capture_output=True, text=True,
                              env=self.env(env), input=input, timeout=timeout,
                              cwd=cwd or self.home)

    def popen(self, *args: str, env: dict[str, str] | None = None, output: Path
              ) -> subprocess.Popen[bytes]:
        """`mailagent ARGS` started and left running, stdout and stderr into `output`."""
        with output.open("ab") as out:
            return subprocess.Popen([str(self.bin), *args], stdout=out, stderr=out,
                                    stdin=subprocess.DEVNULL, env=self.env(env), cwd=self.home)

    def wheel_names(self) -> list[str]:
        with zipfile.ZipFile(self.wheel) as archive:
            return archive.namelist()


INSTALLED_ENV = "MAILAGENT_INSTALLED"  # set by scripts/test.sh: the install to test


def installed_for_tests() -> Installed:
    """The install the test command made (scripts/test.sh builds it first and names it in
    $MAILAGENT_INSTALLED), or a new one when pytest runs on its own."""
    given = os.environ.get(INSTALLED_ENV)
    if not given:
        return build_and_install()
    root = Path(given)
    [wheel] = (root / "dist").glob("mailagent-*.whl")
    installed = Installed(root, wheel, root / "bin" / "mailagent")
    if not installed.bin.exists():
        raise RuntimeError(f"${INSTALLED_ENV}={root} holds no installed mailagent: run "
                           "`python -m tests.support.installed DIR` or unset it")
    return installed


def build_and_install(root: Path | None = None) -> Installed:
    """Build the wheel (with build isolation, as pip does for a user) and pipx-install it."""
    root = root or Path(tempfile.mkdtemp(prefix="mailagent-installed-"))
    (root / "home").mkdir(parents=True)
    dist, tree = root / "dist", root / "src"
    # A clean copy: a build/ or *.egg-info left in the checkout must not fill gaps in the
    # package data (setuptools builds in the tree and reuses what it finds there).
    shutil.copytree(SOURCE, tree, ignore=shutil.ignore_patterns(*LEFTOVERS))
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "--wheel-dir",
          str(dist), str(tree)], cwd=root)
    [wheel] = dist.glob("mailagent-*.whl")
    pipx = clean_env(PIPX_HOME=str(root / "pipx"), PIPX_BIN_DIR=str(root / "bin"),
                     PIPX_MAN_DIR=str(root / "man"), HOME=str(root / "home"))
    _run([sys.executable, "-m", "pipx", "install", "--python", sys.executable, str(wheel)],
         cwd=root, env=pipx)
    # What README tells the owner of a machine without a desktop keyring to add; tests choose
    # it (or no keyring) with keyring's own PYTHON_KEYRING_BACKEND.
    _run([sys.executable, "-m", "pipx", "inject", "mailagent", "keyrings.alt"], cwd=root,
         env=pipx)
    return Installed(root, wheel, root / "bin" / "mailagent")


def _run(command: list[str], cwd: Path, env: dict[str, str] | None = None) -> None:
    result = subprocess.run(command, cwd=cwd, env=env or clean_env(), capture_output=True,
                            text=True, timeout=900)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({result.returncode}):\n"
                           f"{result.stdout}\n{result.stderr}")


if __name__ == "__main__":  # scripts/test.sh: build and install into the folder given
    made = build_and_install(Path(sys.argv[1]))
    print(f"installed {made.wheel.name} with pipx: {made.bin}")
