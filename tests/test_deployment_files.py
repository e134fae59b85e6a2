"""The container files of a deployment (Dockerfile, deploy/compose.yaml and what they name)
cannot be built here: they are read, and what they point to is checked to exist and to load."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import yaml

from mailagent.cli import build_parser
from mailagent.deployment import check_separate, load_deployment

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"


def compose() -> dict:  # type: ignore[type-arg]
    loaded = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    assert isinstance(loaded, dict)
    return loaded


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    lines = [line.strip() for line in text.splitlines()]
    return [(line.split(None, 1)[0], line.split(None, 1)[1]) for line in lines
            if line and not line.startswith("#")]


def test_the_image_is_slim_python_with_bubblewrap_and_runs_every_agent_of_config() -> None:
    steps = dockerfile_instructions()
    assert [args for op, args in steps if op == "FROM"][-1] == "python:3.11-slim-bookworm"
    runs = " ".join(args for op, args in steps if op == "RUN")
    assert "apt-get install -y --no-install-recommends bubblewrap" in runs
    assert "pip wheel" in runs  # the wheel, with the extra that brings the PostgreSQL driver:
    assert 'pip install --no-cache-dir "$(ls /wheels/*.whl)[postgres]"' in runs
    assert "postgres" in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    [entrypoint] = [json.loads(args) for op, args in steps if op == "ENTRYPOINT"]
    [command] = [json.loads(args) for op, args in steps if op == "CMD"]
    assert entrypoint == ["mailagent"] and command == ["run", "--configs", "/config"]
    args = build_parser().parse_args(command)
    assert args.configs == "/config" and args.func.__name__ == "cmd_run"
    assert [args for op, args in steps if op == "USER"] == ["mailagent"]


def test_compose_runs_the_image_from_these_sources_beside_postgres() -> None:
    services = compose()["services"]
    agent = services["mailagent"]
    context = (DEPLOY / agent["build"]["context"]).resolve()
    assert context == ROOT and (context / agent["build"]["dockerfile"]).is_file()
    args = build_parser().parse_args(agent["command"])
    assert args.configs == "/config" and "entrypoint" not in agent  # the image's: mailagent
    mounts = dict(volume.split(":", 1) for volume in agent["volumes"])
    assert mounts["./config"] == "/config:ro" and (DEPLOY / "config").is_dir()
    assert agent["depends_on"]["postgres"]["condition"] == "service_healthy"
    postgres = services["postgres"]
    assert postgres["image"].startswith("postgres:") and "healthcheck" in postgres
    init = [v.split(":")[0] for v in postgres["volumes"] if "docker-entrypoint-initdb.d" in v]
    assert [(DEPLOY / path).is_file() for path in init] == [True]
    assert set(compose()["volumes"]) == {"postgres-data", "mailagent-data"}


def test_the_example_agents_load_apart_each_on_its_own_database_made_by_the_init_script(
) -> None:
    agents = load_deployment(DEPLOY / "config", secrets=False)
    assert sorted(agents) == ["alice", "bob"]
    check_separate(agents)
    init = (DEPLOY / "postgres-init.sql").read_text()
    environment = compose()["services"]["mailagent"]["environment"]
    for name, settings in agents.items():
        assert settings.data_dir == Path(f"/data/{name}")
        role, password, database = re.fullmatch(
            r"postgresql\+psycopg://(\w+):([\w-]+)@postgres:5432/(\w+)",
            settings.database_url).groups()  # type: ignore[union-attr]
        assert f"CREATE ROLE {role} LOGIN PASSWORD '{password}';" in init
        assert f"CREATE DATABASE {database} OWNER {role};" in init
        assert f"{name.upper()}_IMAP_PASSWORD" in environment
        assert f"{name.upper()}_SMTP_PASSWORD" in environment
        assert settings.policies_dir == DEPLOY / "config" / name / "policies"
