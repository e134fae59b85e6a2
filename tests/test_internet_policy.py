"""The `[internet]` table: off unless a key turns a web tool on, its errors name the file, the
line and the fix, and `policy explain internet` and `check` say what is offered (SECURITY.md
E4, A4)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mailagent.errors import PolicyError
from mailagent.mail.render import shipped_text
from mailagent.policy import InternetRule, explain_internet, load_policy
from tests.support.config import write_config


def policies(tmp_path: Path, files: dict[str, str]) -> Path:
    folder = tmp_path / "policies"
    folder.mkdir(exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(text)
    return folder


def mailagent(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TEST_IMAP_PASSWORD": "agent-secret"}
    return subprocess.run([sys.executable, "-m", "mailagent", *args], capture_output=True,
                          text=True, env=env, timeout=60)


def test_no_table_and_the_commented_example_offer_no_web_tool(tmp_path: Path) -> None:
    folder = policies(tmp_path, {"example.toml": shipped_text("examples/policy.toml")})
    policy = load_policy(folder, home=tmp_path)
    assert policy.internet is None
    assert explain_internet(policy, "web_search") == (
        "deny", "default: no [internet] table, so no web tool is offered")
    off = load_policy(policies(tmp_path, {"web.toml": "[internet]\nmax_uses = 3\n"}))
    assert off.internet == InternetRule(max_uses=3, source="web.toml:1")
    assert explain_internet(off, "web_fetch")[0] == "deny"


def test_a_table_turns_on_only_what_it_names_with_its_domains(tmp_path: Path) -> None:
    policy = load_policy(policies(tmp_path, {"web.toml": (
        "# the web\n[internet]\nweb_search = true\n"
        'allowed_domains = ["Python.org", "example.org/blog"]\n')}))
    assert policy.internet == InternetRule(
        web_search=True, allowed_domains=("python.org", "example.org/blog"), source="web.toml:2")
    assert explain_internet(policy, "web_search") == ("allow", (
        "web.toml:2: web_search is offered only on python.org, example.org/blog, at most 5 "
        "times per task (the API runs it; what it brings back is data)"))
    assert explain_internet(policy, "web_fetch") == (
        "deny", "web.toml:2: [internet] does not set web_fetch = true")


@pytest.mark.parametrize(("text", "message"), [
    ('web_search = "yes"\n', "line 2: web_search = 'yes' must be true or false"),
    ("web_serch = true\n", 'line 2: unknown key \'web_serch\' in [internet] (did you mean '
                           '"web_search"?)'),
    ('allowed_domains = ["https://example.org"]\n', "line 2: allowed_domains: "
                                                    "'https://example.org' is not a domain"),
    ('blocked_domains = ["\u0430mazon.com"]\n', "line 2: blocked_domains: '\u0430mazon.com' is "),
    ('allowed_domains = "example.org"\n', "line 2: allowed_domains must be a list"),
    ('allowed_domains = ["a.org"]\nblocked_domains = ["b.org"]\n',
     "line 3: allowed_domains and blocked_domains cannot both be set"),
    ("max_uses = 0\n", "line 2: max_uses = 0 must be a whole number from 1 to 100"),
    ("max_uses = 500\n", "line 2: max_uses = 500 must be a whole number from 1 to 100"),
    ("max_content_tokens = true\n", "line 2: max_content_tokens = True must be a whole number"),
])
def test_a_broken_internet_table_is_an_error_naming_the_line(tmp_path: Path, text: str,
                                                             message: str) -> None:
    folder = policies(tmp_path, {"web.toml": "[internet]\n" + text})
    with pytest.raises(PolicyError, match="web.toml " + _escaped(message)):
        load_policy(folder)


def _escaped(message: str) -> str:
    return "".join("\\" + c if c in "()[]?.*+" else c for c in message)


def test_a_second_internet_table_is_an_error(tmp_path: Path) -> None:
    folder = policies(tmp_path, {"a.toml": "[internet]\nweb_search = true\n",
                                 "b.toml": "\n[internet]\nweb_fetch = true\n"})
    with pytest.raises(PolicyError, match=r"b.toml line 2: a second \[internet\] table "
                                          r"\(the first is at a.toml:1\)"):
        load_policy(folder)


def test_policy_explain_internet_and_check_say_what_is_offered(tmp_path: Path) -> None:
    config = write_config(tmp_path, 1, 1)
    policies(tmp_path, {"web.toml": '[internet]\nweb_fetch = true\nmax_uses = 2\n'
                                    'blocked_domains = ["example.net"]\n'})
    fetch = mailagent("policy", "explain", "--config", str(config), "internet", "web_fetch")
    search = mailagent("policy", "explain", "--config", str(config), "internet", "web_search")
    wrong = mailagent("policy", "explain", "--config", str(config), "internet", "browse")
    assert fetch.returncode == 0 and fetch.stdout.strip() == (
        "allow: web.toml:1: web_fetch is offered anywhere but example.net, at most 2 times "
        "per task (the API runs it; what it brings back is data)")
    assert search.stdout.startswith("deny: web.toml:1: [internet] does not set web_search")
    assert wrong.returncode == 2 and "write web_search or web_fetch" in wrong.stderr
    check = mailagent("check", "--config", str(config))  # no IMAP here: it fails, but says
    assert "web tools: web.toml:1: web_fetch is offered anywhere but example.net" in check.stdout
    (tmp_path / "policies" / "web.toml").unlink()
    check = mailagent("check", "--config", str(config))
    assert "web tools: not offered (no [internet] table in the policies)" in check.stdout
