"""Rendering: the Jinja2 templates shipped in mailagent/templates/, and Markdown to safe HTML.

The only importer of jinja2 and markupsafe (Markdown is read by mailagent.mail.markdown).
Templates are package data, found through the import system (jinja2's PackageLoader), so they
load alike from a wheel, a zip or a checkout.

In: a template name and its values. Out: text. Templates render with StrictUndefined, so a
missing value is an error at render time, never an empty string in a prompt or a mail.
"""

from __future__ import annotations

import importlib.resources
from collections.abc import Mapping
from functools import cache
from typing import Any

import jinja2
from markupsafe import Markup

from mailagent.errors import RenderError
from mailagent.mail import markdown


@cache
def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.PackageLoader("mailagent", "templates"),
        undefined=jinja2.StrictUndefined,
        # HTML is escaped (SECURITY.md E1: a subject quoted from a forward is text, never
        # markup); the text templates are not, since they are plain text mails and prompts.
        autoescape=jinja2.select_autoescape(["html.j2"], default=False),
        keep_trailing_newline=True,
        trim_blocks=False,
    )


def render(name: str, **values: Any) -> str:
    """Raises RenderError (a template missing from the install, or a value it lacks)."""
    try:
        return _environment().get_template(name).render(**values)
    except (jinja2.TemplateError, OSError, ValueError) as exc:
        raise RenderError(f"template {name} does not render: {type(exc).__name__}: {exc}; "
                          "reinstall mailagent (`pipx reinstall mailagent`) and run "
                          "`mailagent check`") from exc


@cache
def _deploy_environment() -> jinja2.Environment:
    """XML (launchd plist, Windows task) is escaped: a path with `&` or `<` stays one string."""
    return jinja2.Environment(
        loader=jinja2.PackageLoader("mailagent", "deploy"),
        undefined=jinja2.StrictUndefined,
        autoescape=jinja2.select_autoescape(["plist.j2", "xml.j2"]),
        keep_trailing_newline=True,
    )


def render_deploy(name: str, **values: Any) -> str:
    """A service definition from deploy/ (systemd unit, launchd plist, scheduled task)."""
    return _deploy_environment().get_template(name).render(**values)


def template_names() -> list[str]:
    """The templates the code renders; each must be shipped (check renders every one)."""
    return sorted(SAMPLES)


def shipped_text(name: str) -> str:
    """A file shipped in the package, e.g. "examples/policy.toml", read as the import system
    finds it (a wheel, a zip or a checkout alike)."""
    return importlib.resources.files("mailagent").joinpath(name).read_text(encoding="utf-8")


SAMPLES: dict[str, dict[str, Any]] = {
    "system.md.j2": {"today": "2026-01-01", "workspace": "/workspace",
                     "folders": [{"path": "/folder", "access": "write", "delete": "ask"}],
                     "memory": [(1, "a note")],
                     "skills": [{"name": "expenses", "description": "Add a receipt.",
                                 "path": "/skills/expenses/SKILL.md"}],
                     "commands": {"allow": ["python3"], "network": False,
                                  "timeout_seconds": 60},
                     "desktop": {"apps": ["mousepad"], "width": 1024, "height": 768,
                                 "max_actions": 50},
                     "internet": {"web_search": True, "web_fetch": True,
                                  "allowed_domains": ["example.org"], "blocked_domains": [],
                                  "max_uses": 5}},
    "completion.md.j2": {"answer": "Done.", "attached": ["a.txt"], "not_attached": ["/b.bin"],
                         "pictures": [{"key": "picture-1", "alt": "chart.png"}],
                         "changes": ["created /a.txt"], "workspace_changes": 2, "task_id": 1,
                         "tokens": 10, "cost": 0.01, "undo_hint": True,
                         "web": "", "sources": [],
                         "run_note": "Scheduled run of #1",
                         "scheduled": ["Scheduled #1: every day at 08:00 (UTC)"]},
    "failure.md.j2": {"task_id": 1, "reason": "budget", "advice": "Reply continue.",
                      "partial": "Half.", "pictures": [], "changes": ["created /a.txt"],
                      "workspace_changes": 1, "tokens": 10, "cost": 0.01, "web": "",
                      "run_note": "Scheduled run of #1",
                      "scheduled": ["Scheduled #1: every day at 08:00 (UTC)"]},
    "command.md.j2": {"body": "status"},
    "refused.md.j2": {"reason": "too large", "kind": "limit"},
    "held.md.j2": {"count": 2, "reason": "61 replies to my mail in the last hour", "limit": 60,
                   "runs_at": "2026-01-01 09:00"},
    "budget.md.j2": {"task_id": 1, "reason": "budget: 40 turns", "tokens": 10, "cost": 0.01,
                     "partial": "Half done.", "hours": 24.0},
    "approval.md.j2": {"task_id": 1, "operation": "delete /a.txt", "reason": "policy asks",
                       "hours": 24.0},
    "schedule_approval.md.j2": {"schedule_id": 1, "when": "every day at 08:00",
                                "timezone": "UTC", "conversation": "main",
                                "first_run": "Mon 2026-01-05 08:00 UTC",
                                "task_lines": ["Summarise ~/Reports"],
                                "reason": "the mail forwards a message",
                                "owner_lines": ["What is this?"], "hours": 24.0},
    "draft_approval.md.j2": {"draft_id": 1, "task_id": 1, "sender": "agent@example.com",
                             "to": "a@example.org", "cc": "", "subject": "Tuesday",
                             "in_reply_to": "", "fence": "```", "body": "Tuesday works.",
                             "attachments": [{"name": "a.pdf", "size": 1, "sha256": "00"}],
                             "message_id": "<x@example.com>", "message_sha256": "00",
                             "digest": "00", "hours": 24.0},
    "mail.html.j2": {"subject": "Re: x", "body": "<p>x</p>"},
}


def render_sample(name: str) -> str:
    """Render a template with sample values, to prove at start-up that it renders at all."""
    return render(name, **SAMPLES.get(name, {}))


def check_templates() -> list[str]:
    """Every template the code renders, rendered once; raises RenderError naming the first
    that is missing or broken (a damaged install), so that `run` refuses to start."""
    names = template_names()
    for name in names:
        render_sample(name)
    return names


def markdown_html(text: str, pictures: Mapping[str, str] | None = None) -> Markup:
    """HTML from the model's Markdown that loads nothing: no raw HTML, links as their text and
    address, images as their words unless `pictures` maps their source to a part of the mail
    (a Content-ID); every element styled inline, to read on a phone and in dark mode."""
    return Markup(markdown.to_html(text, pictures))  # escaped by the parser: kept as it is


def markdown_text(text: str) -> str:
    """The plain text part: `text` without Markdown's marks (mailagent.mail.markdown)."""
    return markdown.to_text(text)
