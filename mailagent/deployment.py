"""Several agents, one deployment: `mailagent run --configs DIR`, one agent per person.

In: a folder with one subfolder per agent, each holding its own `mailagent.toml` (with the
policies, skills and schedules beside it, as for one agent). Out: each agent's settings,
checked to share nothing (data directory, database, mailbox, policies), each knowing what the
others own so that its tools cannot reach it; and the supervisor that runs one
`mailagent run` process per agent, restarts one that crashed, and stops them all on SIGTERM.
Side effects: the child processes. It never runs an agent in its own process: one process per
agent keeps each one's memory, signal handlers, file descriptors and crashes its own.
"""

from __future__ import annotations

import ctypes
import dataclasses
import logging
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

from mailagent.config import Settings, load_settings
from mailagent.errors import ConfigError
from mailagent.store.claims import mailbox_of
from mailagent.store.db import without_password

log = logging.getLogger(__name__)

CONFIG_NAME = "mailagent.toml"  # DIR/<name>/mailagent.toml: the agent <name>
RESTART_FIRST_SECONDS = 2.0  # a crashed agent starts again after this, doubling each crash
RESTART_MAX_SECONDS = 60.0
STEADY_SECONDS = 60.0  # an agent that ran this long before it crashed starts again at once
STOP_SECONDS = 30.0  # how long a stopping agent may take before it is killed
PR_SET_PDEATHSIG = 1  # linux/prctl.h
T = TypeVar("T")
DEFAULT_PORTS = {"postgresql": 5432, "mysql": 3306, "mariadb": 3306}  # a URL without a port


def find_agents(folder: Path) -> dict[str, Path]:
    """Each agent's name (its folder's name) and config file, in name order."""
    if not folder.is_dir():
        raise ConfigError(f"--configs {folder}: no such folder; make one with a subfolder per "
                          f"agent, each holding its {CONFIG_NAME}")
    agents = {p.parent.name: p for p in sorted(folder.glob(f"*/{CONFIG_NAME}"))}
    if not agents:
        raise ConfigError(f"--configs {folder}: no agent in it; each agent is a subfolder "
                          f"with its own {CONFIG_NAME} (e.g. {folder / 'alice' / CONFIG_NAME})")
    return agents


def load_deployment(folder: Path, environ: Mapping[str, str] | None = None,
                    secrets: bool = True) -> dict[str, Settings]:
    """Every agent's settings, each with the others' files in `others_protected`;
    ConfigError naming the file and the key when a config is wrong or two agents share what
    must be theirs alone."""
    loaded = load_each(folder, environ, secrets)
    if failed := [error for error in loaded.values() if isinstance(error, ConfigError)]:
        raise failed[0]
    agents = {name: s for name, s in loaded.items() if isinstance(s, Settings)}
    check_separate(agents)
    return {name: dataclasses.replace(s, others_protected=others_of(name, agents))
            for name, s in agents.items()}


def load_each(folder: Path, environ: Mapping[str, str] | None = None,
              secrets: bool = True) -> dict[str, Settings | ConfigError]:
    """Every agent's settings, or the ConfigError its config gave, in name order: for the
    commands that read what the agents did, where one broken config must not hide the
    others'."""
    loaded: dict[str, Settings | ConfigError] = {}
    for name, path in find_agents(folder).items():
        try:
            loaded[name] = load_settings(path, environ, secrets)
        except ConfigError as exc:
            loaded[name] = exc
    return loaded


def agent_named(folder: Path, agents: Mapping[str, T], name: str | None) -> T:
    """What `--agent NAME` names among the agents of `folder`; a ConfigError that lists them
    when no name or another one is given."""
    names = ", ".join(agents)
    if name is None:
        raise ConfigError(f"--configs {folder} has several agents: say which with --agent "
                          f"NAME, one of {names}")
    if name not in agents:
        raise ConfigError(f"--agent {name}: no {folder / name / CONFIG_NAME}; the agents of "
                          f"{folder} are {names}")
    return agents[name]


def load_agent(folder: Path, name: str, environ: Mapping[str, str] | None = None) -> Settings:
    """One agent's settings, its secrets read, with the others' files in `others_protected`:
    the others are loaded to know what they own and that they share nothing with it, without
    their secrets (no keyring lookup, no variable read for them)."""
    paths = find_agents(folder)
    agent_named(folder, paths, name)
    agents = {other: load_settings(path, environ, secrets=other == name)
              for other, path in paths.items()}
    check_separate(agents)
    return dataclasses.replace(agents[name], others_protected=others_of(name, agents))


def owned_paths(settings: Settings) -> list[Path]:
    """What one agent owns on disk: its config's folder (policies, skills, schedules and
    secrets beside it by default), its policies, skills and data, its database and log."""
    paths = [settings.config_path.parent, settings.policies_dir, settings.data_dir]
    paths += [settings.skills_dir] if settings.skills_dir is not None else []
    paths += [settings.schedules.file] if settings.schedules.file is not None else []
    paths += [database] if (database := sqlite_file(settings.database_url)) else []
    paths += [settings.service.log_file] if settings.service.log_file is not None else []
    return paths


def others_of(name: str, agents: Mapping[str, Settings]) -> tuple[Path, ...]:
    """What the agents other than `name` own; a skills folder this agent shares with them
    stays its own (read-only to every tool anyway)."""
    own = agents[name]
    found = [path for other, s in agents.items() if other != name for path in owned_paths(s)
             if path != own.skills_dir]
    return tuple(dict.fromkeys(found))


def check_separate(agents: Mapping[str, Settings]) -> None:
    """ConfigError listing every pair of agents that share a data directory, a database, a
    mailbox or a policies folder, or whose folders lie one inside the other."""
    problems: list[str] = []
    names = sorted(agents)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            problems += shared(a, agents[a], b, agents[b])
    if problems:
        raise ConfigError("; ".join(problems))


def shared(a: str, sa: Settings, b: str, sb: Settings) -> list[str]:
    where = f"{sa.config_path} and {sb.config_path}"
    problems = []
    if database_key(sa.database_url) == database_key(sb.database_url):
        shown = without_password(sa.database_url)
        problems.append(f"agents {a} and {b} share the database {shown} "
                        f"({where}): give each its own database_url (another database or file)")
    if mailbox_of(sa.imap) == mailbox_of(sb.imap):
        problems.append(f"agents {a} and {b} watch the same mailbox {sa.imap.username} "
                        f"({sa.imap.folder} on {sa.imap.host}) ({where}): give each its own "
                        "address")
    for label_a, path_a, label_b, path_b in folder_pairs(sa, sb):
        if path_a.is_relative_to(path_b) or path_b.is_relative_to(path_a):
            problems.append(f"the {label_a} of agent {a} ({path_a}) and the {label_b} of "
                            f"agent {b} ({path_b}) overlap ({where}): give each agent folders "
                            "of its own (set data_dir and policies_dir)")
    return problems


def folder_pairs(sa: Settings, sb: Settings) -> list[tuple[str, Path, str, Path]]:
    def folders(s: Settings) -> list[tuple[str, Path]]:
        return [("data_dir", s.data_dir), ("policies_dir", s.policies_dir),
                ("config folder", s.config_path.parent)]
    return [(la, pa, lb, pb) for la, pa in folders(sa) for lb, pb in folders(sb)]


def sqlite_file(database_url: str) -> Path | None:
    if not database_url.startswith("sqlite:///"):
        return None
    name = database_url.removeprefix("sqlite:///").split("?", 1)[0]
    return Path(name).resolve() if name and name != ":memory:" else None


def database_key(database_url: str) -> tuple[str, ...]:
    """Which database a URL names, without its login: SQLite by its file, a server by host,
    port and database name."""
    if (path := sqlite_file(database_url)) is not None:
        return ("sqlite", str(path))
    parts = urlsplit(database_url)
    scheme = parts.scheme.split("+", 1)[0]
    port = parts.port or DEFAULT_PORTS.get(scheme)
    return (scheme, (parts.hostname or "").lower(), str(port or ""), parts.path.strip("/"))



# ------------------------------------------------------------ the supervisor


@dataclasses.dataclass
class Child:
    """One agent's `mailagent run` process and when it may start again."""

    name: str
    command: list[str]
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    backoff_seconds: float = RESTART_FIRST_SECONDS
    start_at: float = 0.0
    done: bool = False  # ended cleanly: not started again


def agent_command(folder: Path, name: str, verbose: bool) -> list[str]:
    return [sys.executable, "-m", "mailagent", *(["--verbose"] if verbose else []), "run",
            "--configs", str(folder), "--agent", name]


def supervise(folder: Path, names: list[str], verbose: bool = False,
              stop: threading.Event | None = None) -> int:
    """Run one process per agent until SIGINT/SIGTERM (or `stop`); a process that ends with
    an error starts again after a growing pause. 0 once all have stopped cleanly."""
    stop = stop or threading.Event()
    restore = on_stop_signals(stop.set)
    children = [Child(name, agent_command(folder, name, verbose)) for name in names]
    try:
        while not stop.is_set() and not all(c.done for c in children):
            for child in children:
                tend(child, time.monotonic())
            stop.wait(0.2)
    finally:
        failed = stop_all(children)
        restore()
    return 1 if failed else 0


def tend(child: Child, now: float) -> None:
    """Start the child when it is due; notice that it ended and plan its restart."""
    if child.done:
        return
    if child.process is None:
        if now >= child.start_at:
            child.process = subprocess.Popen(child.command, preexec_fn=die_with_parent())
            child.started_at = now
            log.info("agent %s started pid=%s", child.name, child.process.pid)
        return
    code = child.process.poll()
    if code is None:
        return
    child.process = None
    if code == 0:
        log.info("agent %s stopped", child.name)
        child.done = True
        return
    if now - child.started_at >= STEADY_SECONDS:
        child.backoff_seconds = RESTART_FIRST_SECONDS
    log.error("agent %s ended with exit code %s; it starts again in %g s", child.name, code,
              child.backoff_seconds)
    child.start_at = now + child.backoff_seconds
    child.backoff_seconds = min(child.backoff_seconds * 2, RESTART_MAX_SECONDS)


def die_with_parent() -> Callable[[], None] | None:
    """On Linux, what makes a child get SIGTERM when the supervisor dies, even by SIGKILL
    (prctl PR_SET_PDEATHSIG), so that no agent outlives it; None elsewhere. The supervisor
    starts no thread, so running this between fork and exec is safe."""
    if sys.platform != "linux":
        return None
    libc = ctypes.CDLL(None, use_errno=True)

    def ask() -> None:
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    return ask


def stop_all(children: list[Child]) -> bool:
    """SIGTERM to every running agent, then wait (killing one that takes too long); whether
    any ended with an error."""
    running = [c for c in children if c.process is not None and c.process.poll() is None]
    for child in running:
        assert child.process is not None
        child.process.send_signal(signal.SIGTERM)
    failed = False
    for child in running:
        assert child.process is not None
        try:
            code = child.process.wait(STOP_SECONDS)
        except subprocess.TimeoutExpired:
            log.error("agent %s did not stop within %g s: killed", child.name, STOP_SECONDS)
            child.process.kill()
            code = child.process.wait()
        if code == 0:
            log.info("agent %s stopped", child.name)
        else:
            log.error("agent %s ended with exit code %s while stopping", child.name, code)
        failed = failed or code != 0
    return failed


def on_stop_signals(handler: Callable[[], None]) -> Callable[[], None]:
    """Call `handler` on SIGINT and SIGTERM; returns what puts the old handlers back."""
    old = {sig: signal.signal(sig, lambda *_: handler())
           for sig in (signal.SIGINT, signal.SIGTERM)}

    def restore() -> None:
        for sig, previous in old.items():
            signal.signal(sig, previous)
    return restore
