"""Rendering of the Jinja2 templates in templates/. The only importer of jinja2.

In: a template name and its values. Out: text. Templates render with StrictUndefined, so a
missing value is an error at render time, never an empty string in a prompt or a mail.
"""

from __future__ import annotations

import importlib.resources
from functools import cache
from pathlib import Path
from typing import Any

import jinja2


def templates_dir() -> Path:
    """templates/ of the source tree, or its copy inside an installed package."""
    source = Path(__file__).resolve().parent.parent / "templates"
    if source.is_dir():
        return source
    return Path(str(importlib.resources.files("mailagent.templates")))


@cache
def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(templates_dir()),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
        trim_blocks=False,
    )


def render(name: str, **values: Any) -> str:
    return _environment().get_template(name).render(**values)


def template_names() -> list[str]:
    return _environment().list_templates()


SAMPLES: dict[str, dict[str, Any]] = {
    "system.md.j2": {"today": "2026-01-01", "workspace": "/workspace",
                     "folders": [{"path": "/folder", "access": "write", "delete": "ask"}],
                     "memory": [(1, "a note")]},
}


def render_sample(name: str) -> str:
    """Render a template with sample values, to prove at start-up that it renders at all."""
    return render(name, **SAMPLES.get(name, {}))
