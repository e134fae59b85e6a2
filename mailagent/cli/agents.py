"""Which agent a command reads: `--config PATH`, or `--agent NAME` of the deployment
`--configs DIR`; and `mailagent status`, of one agent or of every agent of a deployment.

In: the parsed command line. Out: the config file of the agent that `show`, `history`, `logs`
and `resume` read; for `status`, each agent's status under its name, where an agent whose config
or database cannot be read is shown with its error and makes the exit code 1. Side effects:
none; reads only, without secrets. It never walks a deployment's folder itself: deployment.py finds
and loads the agents, so every command agrees on which agents there are.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mailagent.cli import status_view
from mailagent.cli.status_view import Snapshot
from mailagent.config import Settings, find_config_path, load_settings
from mailagent.deployment import CONFIG_NAME, agent_named, find_agents, load_each
from mailagent.errors import ConfigError, MailagentError


def add_agent_arguments(command: argparse.ArgumentParser, every: bool = False) -> None:
    """`--config PATH`, and `--configs DIR` with `--agent NAME` for one agent of several
    (`every`: a command that, without `--agent`, speaks for every agent)."""
    command.add_argument("--config", help="config file (default: $MAILAGENT_CONFIG, then the "
                         "user config dir)")
    command.add_argument("--configs", metavar="DIR", help="several agents: one subfolder of DIR "
                         f"per agent, each with its {CONFIG_NAME}")
    command.add_argument("--agent", metavar="NAME", help="which agent of --configs DIR" + (
        " (default: every one)" if every else " (needed with it)"))


def deployment_folder(args: argparse.Namespace) -> Path:
    """The folder of `--configs DIR`; a ConfigError when it is given with `--config`, or when
    `--agent` comes without it."""
    if args.configs is None:
        raise ConfigError(f"--agent {args.agent} names an agent of a deployment: give its "
                          "folder too, with --configs DIR")
    if args.config is not None:
        raise ConfigError("give --config PATH (one agent) or --configs DIR (one agent per "
                          "subfolder), not both")
    return Path(args.configs).expanduser().absolute()


def is_deployment(args: argparse.Namespace) -> bool:
    return getattr(args, "configs", None) is not None or getattr(args, "agent", None) is not None


def config_path(args: argparse.Namespace) -> Path:
    """The config file of the one agent a command reads: `--config PATH` (or its default),
    or that of `--agent NAME` of `--configs DIR` (task numbers and logs are each agent's)."""
    if not is_deployment(args):
        return find_config_path(args.config)
    folder = deployment_folder(args)
    return agent_named(folder, find_agents(folder), args.agent)


def cmd_status(args: argparse.Namespace) -> int:
    """`status`: one agent's; with `--configs DIR` every agent's (or `--agent NAME`'s) under
    its name, 1 when one of them could not be read."""
    if not is_deployment(args):
        snapshot = status_view.snapshot_of(load_settings(config_path(args), secrets=False))
        print_one(snapshot, form(args))
        return 0
    folder = deployment_folder(args)
    loaded = load_each(folder, secrets=False)
    if args.agent is not None:
        loaded = {args.agent: agent_named(folder, loaded, args.agent)}
    statuses = {name: status_of(settings) for name, settings in loaded.items()}
    print_agents(statuses, form(args))
    return 1 if any(isinstance(status, str) for status in statuses.values()) else 0


def status_of(settings: Settings | ConfigError) -> Snapshot | str:
    """An agent's snapshot, or why it could not be taken (its config, its database)."""
    if isinstance(settings, ConfigError):
        return str(settings)
    try:
        return status_view.snapshot_of(settings)
    except MailagentError as exc:
        return str(exc)


def form(args: argparse.Namespace) -> str:
    """json, plain (asked for, or stdout is not a terminal) or rich."""
    if args.json:
        return "json"
    return "plain" if args.plain or not sys.stdout.isatty() else "rich"


def print_one(snapshot: Snapshot, shape: str) -> None:
    if shape == "json":
        status_view.print_json(snapshot)
    elif shape == "plain":
        print("\n".join(status_view.plain_lines(snapshot)))
    else:
        status_view.print_rich(snapshot)


def print_agents(statuses: dict[str, Snapshot | str], shape: str) -> None:
    if shape == "json":
        status_view.print_agents_json(statuses)
    elif shape == "plain":
        print("\n".join(status_view.agents_plain_lines(statuses)))
    else:
        status_view.print_rich_agents(statuses)
