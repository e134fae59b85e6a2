"""[mcp.<server>] tables in the policy files: what validates, what is refused with its line, the
decision per tool, and what an approval of a tool call is bound to."""

from __future__ import annotations

from pathlib import Path

import pytest

from mailagent.errors import PolicyError
from mailagent.policy import Decision, Policy, PolicyWatcher, Scope, load_policy
from mailagent.policy.calls import check_call, describe_operation, operation_digest
from mailagent.policy.mcp import decide_mcp, server_env, server_headers

GOOD = """[[folders]]
path = "/tmp"
access = "read"

[mcp.notes]
command = "notes-server"
args = ["--stdio"]
env = { NOTES_TOKEN = "env:MY_NOTES_TOKEN", LANG = "C" }

[mcp.notes.tools]
search = "allow"
add = "ask"
wipe = "deny"

[mcp.calendar]
url = "https://calendar.example/mcp"
headers = { Authorization = "env:CAL_AUTH" }
tools = { today = "allow" }
"""


def policy_of(tmp_path: Path, text: str) -> Policy:
    folder = tmp_path / "policies"
    folder.mkdir(exist_ok=True)
    (folder / "p.toml").write_text(text, encoding="utf-8")
    return load_policy(folder, home=tmp_path)


def test_servers_load_with_their_tools_and_secrets_stay_references(tmp_path: Path) -> None:
    policy = policy_of(tmp_path, GOOD)
    notes, calendar = policy.mcp
    assert (notes.name, notes.transport, notes.source) == ("notes", "stdio", "p.toml:5")
    assert dict(notes.tools) == {"search": "allow", "add": "ask", "wipe": "deny"}
    assert dict(notes.env)["NOTES_TOKEN"] == "env:MY_NOTES_TOKEN"
    assert (calendar.transport, calendar.url) == ("http", "https://calendar.example/mcp")
    env = {"MY_NOTES_TOKEN": "t0ken", "CAL_AUTH": "Bearer b"}
    assert server_env(notes, env) == {"NOTES_TOKEN": "t0ken", "LANG": "C"}
    assert server_headers(calendar, env) == {"Authorization": "Bearer b"}
    with pytest.raises(PolicyError, match=r"refers to \$MY_NOTES_TOKEN, which is not set"):
        server_env(notes, {})


def test_each_tool_gets_its_verdict_and_the_rule_and_unlisted_ones_are_denied(
        tmp_path: Path) -> None:
    servers = policy_of(tmp_path, GOOD).mcp
    assert decide_mcp(servers, "mcp__notes__search").verdict == "allow"
    ask = decide_mcp(servers, "mcp__notes__add")
    assert ask.verdict == "ask" and ask.rule == 'p.toml:5 [mcp.notes.tools] add = "ask"'
    wipe = decide_mcp(servers, "mcp__notes__wipe")
    assert wipe.verdict == "deny" and 'wipe = "deny"' in wipe.rule
    other = decide_mcp(servers, "mcp__notes__export")
    assert other.verdict == "deny" and other.rule == "p.toml:5 [mcp.notes] unlisted"
    assert "unlisted tools are denied" in other.reason
    assert decide_mcp(servers, "mcp__mail__send").verdict == "deny"
    assert decide_mcp(servers, "mcp__notes").verdict == "deny"


@pytest.mark.parametrize(("table", "line", "words"), [
    ('[mcp.notes]\ncommand = "x"\nurl = "http://h/mcp"\n', 1, "exactly one of command"),
    ('[mcp.notes]\ncommand = "x"\n\n[mcp.notes.tools]\nsearch = "alow"\n', 5,
     '"allow" | "ask" | "deny"'),
    ('[mcp.notes]\ncommand = "x"\ncomand = "y"\n', 3, 'did you mean "command"'),
    ('[mcp.notes]\ncommand = "x"\nenv = { API_KEY = "sk-123" }\n', 3,
     "looks like a secret written in clear"),
    ('[mcp.notes]\nurl = "http://h/mcp"\nheaders = { Authorization = "Bearer x" }\n', 3,
     "must be a reference"),
    ('[mcp.notes]\nurl = "http://me:pw@h/mcp"\n', 2, "must not hold a user or password"),
    ('[mcp.notes]\nurl = "file:///etc/passwd"\n', 2, "http:// or https://"),
    ('[mcp.my__notes]\ncommand = "x"\n', 1, "letters, digits and '-'"),
    ('[mcp.notes]\ncommand = "x"\n[mcp.notes.tools]\n"a b" = "allow"\n', 4, "tool name"),
])
def test_a_table_that_does_not_validate_names_its_line(tmp_path: Path, table: str, line: int,
                                                       words: str) -> None:
    with pytest.raises(PolicyError) as caught:
        policy_of(tmp_path, table)
    assert f"p.toml line {line}: " in str(caught.value)
    assert words in str(caught.value)


def test_a_broken_mcp_table_never_makes_the_policy_more_permissive(tmp_path: Path) -> None:
    errors: list[PolicyError] = []
    policy_of(tmp_path, GOOD)
    watcher = PolicyWatcher(tmp_path / "policies", errors.append, home=tmp_path)
    assert decide_mcp(watcher.current().mcp, "mcp__notes__search").verdict == "allow"
    (tmp_path / "policies" / "p.toml").write_text(
        GOOD.replace('wipe = "deny"', 'wipe = "deny"\nexport = "alow"') + "\n# edit\n")
    kept = watcher.current().mcp
    assert errors and "export" in str(errors[0])
    assert decide_mcp(kept, "mcp__notes__export").verdict == "deny"
    assert decide_mcp(kept, "mcp__notes__wipe").verdict == "deny"
    fresh = PolicyWatcher(tmp_path / "policies", errors.append, home=tmp_path)
    assert fresh.current().mcp == ()  # nothing good loaded yet: nothing is allowed
    assert decide_mcp(fresh.current().mcp, "mcp__notes__search").verdict == "deny"


def test_an_approval_is_bound_to_the_server_the_tool_and_the_exact_arguments(
        tmp_path: Path) -> None:
    policy = policy_of(tmp_path, GOOD.replace('today = "allow"', 'today = "allow", add = "ask"'))
    scope = Scope(workspace=tmp_path / "ws", home=tmp_path, protected=())
    name, args = "mcp__notes__add", {"text": "buy milk", "tags": ["home"]}
    def judged(tool: str, arguments: dict[str, object]) -> Decision:
        return check_call(policy, scope, tool, arguments, sandboxed=True)

    decision = judged(name, args)
    assert decision.verdict == "ask"
    digest = operation_digest(decision, name, args)
    assert digest == operation_digest(judged(name, dict(args)), name,
                                      {"tags": ["home"], "text": "buy milk"})
    others = [("mcp__calendar__add", args), (name, {"text": "buy milk!", "tags": ["home"]}),
              (name, {"text": "buy milk", "tags": ["home"], "due": "now"})]
    for other, other_args in others:
        assert operation_digest(judged(other, other_args), other, other_args) != digest
    text = describe_operation(name, args, decision)
    assert text == ('call the tool add of the MCP server notes with '
                    '{"tags": ["home"], "text": "buy milk"}')
