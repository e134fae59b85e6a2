"""A fake home for sandbox tests: secrets, a read folder, a write folder, an unlisted folder, the
workspace inside a data folder, and the `View` a policy listing them gives."""

from __future__ import annotations

from pathlib import Path

from mailagent.policy.sandbox import CommandResult, Limits, Runner, SandboxInfo, View


class Box:
    """A fake home with secrets, a read folder, a write folder, an unlisted folder, a workspace."""

    def __init__(self, root: Path, sandbox: SandboxInfo) -> None:
        self.sandbox = sandbox
        self.home = root / "home"
        (self.home / ".ssh").mkdir(parents=True)
        (self.home / ".ssh" / "id_ed25519").write_text("PRIVATE-KEY-SECRET")
        (self.home / ".bashrc").write_text("# the owner's bashrc\n")
        self.reports = self.home / "reports"
        self.reports.mkdir()
        (self.reports / "q3.txt").write_text("Q3 figures")
        self.out = self.home / "out"
        self.out.mkdir()
        self.unlisted = root / "elsewhere"
        self.unlisted.mkdir()
        (self.unlisted / "diary.txt").write_text("DIARY-SECRET")
        self.workspace = root / "data" / "workspaces" / "main"
        self.workspace.mkdir(parents=True)
        self.view = View(read=(self.reports,), write=(self.out,),
                         hidden=(self.home / ".ssh", self.home / ".bashrc",
                                 self.home / ".profile", root / "data"),
                         workspace=self.workspace, home=self.workspace / ".home")

    def run(self, *argv: str, limits: Limits | None = None, view: View | None = None,
            runner: Runner | None = None) -> CommandResult:
        runner = runner or Runner(self.sandbox)
        return runner.run(list(argv), self.workspace, view or self.view, limits or Limits(10))
