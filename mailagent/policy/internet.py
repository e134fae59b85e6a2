"""The internet rule: which of the Messages API's web tools a task is offered, and on what terms.

In: the `[internet]` table of a policy file (TOML written by the owner). Out: an `InternetRule`
(web search and web fetch on or off, the domain lists, the uses per task), or a PolicyError
naming the key and what to write instead; and the words `policy explain internet` prints.
Its readers of a true-or-false key and of a count (`flag`, `count`) serve the other tables too.
Pure: no I/O. It must never turn a tool on that the table does not name (SECURITY.md E4): the
tools are off unless `web_search = true` or `web_fetch = true` is written.
Domains are written as the API takes them (https://docs.claude.com/en/docs/agents-and-tools/
tool-use/web-search-tool): no scheme, subdomains included, a path allowed, one list or the
other; ASCII only, since look-alike letters of other scripts would slip past a list.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from mailagent.errors import PolicyError, unknown_key
from mailagent.policy.rules import INTERNET_KEYS, InternetRule, Policy

Fail = Callable[[str, str | None], PolicyError]


# A host name of letters, digits and '-' in dot-separated labels, then an optional path.
_DOMAIN = re.compile(r"^(?=.{1,253}(/|$))([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+"
                     r"[a-z]([a-z0-9-]{0,61}[a-z0-9])?(/[\x21-\x7e]*)?$")


MAX_USES_PER_TASK = 100  # an upper bound on what one task may spend on searches ($1)


def parse_internet(table: dict[str, Any], fail: Fail, source: str) -> InternetRule:
    """The rule of one `[internet]` table; `fail(message, key)` makes the error to raise."""
    for key in table:
        if key not in INTERNET_KEYS:
            raise fail(unknown_key(key, INTERNET_KEYS, "[internet]"), key)
    search, fetch = (flag(table, key, fail) for key in ("web_search", "web_fetch"))
    allowed, blocked = (_domains(table, key, fail) for key in ("allowed_domains",
                                                              "blocked_domains"))
    if allowed and blocked:
        raise fail("allowed_domains and blocked_domains cannot both be set (the API takes one "
                   "list or the other): keep one", "blocked_domains")
    max_uses = count(table, "max_uses", 5, fail, MAX_USES_PER_TASK)
    tokens = table.get("max_content_tokens")
    if tokens is not None:
        tokens = count(table, "max_content_tokens", 0, fail, 1_000_000)
    return InternetRule(search, fetch, allowed, blocked, max_uses, tokens, source)


def flag(table: dict[str, Any], key: str, fail: Fail) -> bool:
    """`table[key]` as true or false (false when absent); `fail(message, key)` if it is neither."""
    value = table.get(key, False)
    if not isinstance(value, bool):
        raise fail(f"{key} = {value!r} must be true or false", key)
    return value


def count(table: dict[str, Any], key: str, default: int, fail: Fail, top: int | None = None
          ) -> int:
    """`table[key]` as a whole number from 1 (up to `top` if given), `default` when absent."""
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1 or \
            (top is not None and value > top):
        span = "above 0" if top is None else f"from 1 to {top}"
        raise fail(f"{key} = {value!r} must be a whole number {span}", key)
    return value


def _domains(table: dict[str, Any], key: str, fail: Fail) -> tuple[str, ...]:
    value = table.get(key, [])
    if not isinstance(value, list) or not all(isinstance(d, str) for d in value):
        raise fail(f'{key} must be a list of domains, e.g. ["example.org", "docs.python.org"]',
                   key)
    for domain in value:
        if not _DOMAIN.match(domain.lower()):
            raise fail(f"{key}: {domain[:80]!r} is not a domain as the API takes it: write it "
                       'without http:// and in ASCII letters, e.g. "example.org" or '
                       '"example.org/blog"', key)
    return tuple(d.lower() for d in value)


def explain_internet(policy: Policy, tool: str) -> tuple[str, str]:
    """The verdict for `web_search` or `web_fetch` under `policy`, and the words why."""
    rule = policy.internet
    if rule is None:
        return "deny", "default: no [internet] table, so no web tool is offered"
    offered = rule.web_search if tool == "web_search" else rule.web_fetch
    if not offered:
        return "deny", f"{rule.source}: [internet] does not set {tool} = true"
    where = (f"only on {', '.join(rule.allowed_domains)}" if rule.allowed_domains else
             f"anywhere but {', '.join(rule.blocked_domains)}" if rule.blocked_domains else
             "on any domain")
    return "allow", (f"{rule.source}: {tool} is offered {where}, at most {rule.max_uses} times "
                     "per task (the API runs it; what it brings back is data)")
