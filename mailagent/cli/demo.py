"""`mailagent demo`: the whole loop on this computer, with no mail account.

In: a model (ANTHROPIC_API_KEY, or an Anthropic-compatible endpoint by --base-url or
ANTHROPIC_BASE_URL) and optionally a folder. Out: on stdout, the completion mail the embedded SMTP
server received and where the outputs are; exit 0 once it arrived. Side effects, all inside the
demo folder: a config, a starter policy, a sample folder with two notes, the service's data and
its log. The service is `mailagent run` itself, as a child process: the demo proves the path a
real install takes, mail in by SMTP, IMAP IDLE, the agent, and the reply by SMTP.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from email import message_from_bytes
from email import policy as email_policy
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from pathlib import Path
from typing import TYPE_CHECKING

from mailagent.cli.init_config import toml_str
from mailagent.config import env_value
from mailagent.errors import ConfigError, MailagentError, ModelError, StoreError

if TYPE_CHECKING:  # aiosmtpd, pymap and the store are imported only when the demo runs
    from mailagent.cli.demo_mail import Delivered, DemoMailServer
    from mailagent.store import Store, TaskView

HOST = "127.0.0.1"  # loopback only: the "none" owner check below is safe nowhere else
AGENT = "agent@mailagent.localhost"
OWNER = "you@mailagent.localhost"
DEFAULT_MODEL = "claude-sonnet-4-6"
NOTES = {
    "meeting-notes.md": "# Team meeting, Monday\n\n- The release moves to the 14th: two bugs "
                        "left in the installer.\n- Ana takes over the documentation.\n- Budget "
                        "review next Thursday; bring the Q3 numbers.\n",
    "ideas.md": "# Ideas\n\n- Offer a weekly digest by mail.\n- Try the new search index on "
                "the archive first.\n- Ask customers which reports they still read.\n",
}
TASK_SUBJECT = "Summarise my notes"
TASK_BODY = ("Please read the notes in {sample} and write a short summary of them, as a Markdown "
             "list, into {sample}/summary.md. Attach summary.md to your reply.")
NO_MODEL = ("mailagent demo needs a model and found none: set ANTHROPIC_API_KEY (export "
            "ANTHROPIC_API_KEY=sk-ant-...), or give an Anthropic-compatible endpoint with "
            "--base-url URL (or ANTHROPIC_BASE_URL). Nothing was started.")


SILENT_END_SECONDS = 10.0  # a task that ended this long ago with no mail on its way: say so
ENDED = ("done", "failed", "cancelled")
# What a mail about the demo's task is, by the state of the task when it arrived: its label,
# what happened, and what to do. Only "done" is a completion.
REPLY_KINDS: dict[str, tuple[str, str, str]] = {
    "done": ("completion mail", "the task is done", ""),
    "failed": ("failure mail", "the task failed",
               "the reply above says why; the service log is {log}"),
    "queued": ("mail", "the task could not reach the model",
               "check that the model endpoint ({endpoint}) is up and takes your key, then run "
               "the demo again"),
    "waiting_approval": ("approval request", "the task waits for your approval",
                         "run the demo with --keep and reply `approve` from a mail client "
                         "logged in to the servers above"),
    "paused": ("budget question", "the task stopped at its budget",
               "run the demo with --keep and reply `continue` from a mail client logged in "
               "to the servers above"),
}


@dataclass(frozen=True)
class Reply:
    """A mail to the owner about a task, and the state that task was in when it arrived."""

    mail: Delivered
    state: str
    reason: str

    @property
    def label(self) -> str:
        return REPLY_KINDS.get(self.state, ("mail", "", ""))[0]


@dataclass(frozen=True)
class Model:
    base_url: str | None
    has_key: bool


@dataclass(frozen=True)
class Layout:
    """The demo folder: everything the demo writes is in here."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / "mailagent.toml"

    @property
    def policies(self) -> Path:
        return self.root / "policies"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def sample(self) -> Path:
        return self.root / "sample"

    @property
    def log(self) -> Path:
        return self.root / "service.log"

    @property
    def outputs(self) -> list[Path]:
        """Where the agent's files can land: the sample folder and the workspaces."""
        return [self.sample, self.data / "workspaces"]


def find_model(base_url: str | None) -> Model | None:
    key, env_url = env_value("ANTHROPIC_API_KEY"), env_value("ANTHROPIC_BASE_URL")
    url = base_url or env_url
    if key is None and url is None:
        return None
    return Model(url, key is not None)


def write_files(layout: Layout, server: DemoMailServer, model: Model, model_name: str) -> None:
    """Config, starter policy and sample notes; sample files already there are left as they are."""
    layout.sample.mkdir(parents=True, exist_ok=True)
    for name, text in NOTES.items():
        if not (layout.sample / name).exists():
            (layout.sample / name).write_text(text, encoding="utf-8")
    layout.policies.mkdir(exist_ok=True)
    (layout.policies / "demo.toml").write_text(f"""\
# The demo's starter policy: the agent may read and write the sample folder, and nothing else
# (besides its own workspace). It may never delete there; a replaced file is kept in the trash.
[[folders]]
path = {toml_str(str(layout.sample))}
access = "write"
delete = "never"
overwrite = "allow"
""", encoding="utf-8")
    # A local endpoint may need no key, but the SDK insists on one: a placeholder then.
    key_line = 'api_key_env = "ANTHROPIC_API_KEY"' if model.has_key else 'api_key = "none"'
    url_line = f"base_url = {toml_str(model.base_url)}" if model.base_url else ""
    layout.config.write_text(f"""\
# Written by `mailagent demo`: a throwaway config for the embedded mail server on {HOST}.
data_dir = {toml_str(str(layout.data))}
policies_dir = {toml_str(str(layout.policies))}

[imap]
host = "{HOST}"
port = {server.imap_port}
security = "none"
username = "{AGENT}"
password = {toml_str(server.password)}

[smtp]
host = "{HOST}"
port = {server.smtp_port}
security = "none"
username = "{AGENT}"
password = {toml_str(server.password)}
from = "mailagent demo <{AGENT}>"

[owner]
addresses = ["{OWNER}"]
# "none" trusts the From address alone. Acceptable only here: the mail server is embedded,
# listens on {HOST} only, and accepts mail only with this run's random password.
verification = "none"

[model]
name = {toml_str(model_name)}
{key_line}
{url_line}
""", encoding="utf-8")



def task_mail(body: str, subject: str = TASK_SUBJECT) -> bytes:
    message = EmailMessage()
    message["From"] = f"You <{OWNER}>"
    message["To"] = f"mailagent demo <{AGENT}>"
    message["Subject"] = subject
    message["Date"] = formatdate(localtime=True)
    message["Message-ID"] = make_msgid(domain="mailagent.localhost")
    message.set_content(body)
    return message.as_bytes()


def snapshot(folders: list[Path]) -> dict[Path, int]:
    """Every file under these folders with its modification time, to tell what a task made."""
    return {path: path.stat().st_mtime_ns for folder in folders if folder.exists()
            for path in folder.rglob("*") if path.is_file()}


def show_mail(mail: Delivered) -> str:
    """The completion mail as a reader sees it: headers, the text part, attachment names."""
    message = message_from_bytes(mail.raw, policy=email_policy.default)
    lines = [f"{name}: {message[name]}" for name in ("From", "To", "Subject", "Date")
             if message[name]]
    body = message.get_body(preferencelist=("plain",))
    lines += ["", body.get_content().rstrip() if body is not None else "(no text part)"]
    names = [part.get_filename() for part in message.iter_attachments()]
    if names:
        lines += ["", "Attached: " + ", ".join(str(n) for n in names)]
    return "\n".join(lines)


class Demo:
    """One run: mail server, service process, the sample mail, and the wait for the reply."""

    def __init__(self, layout: Layout, model: Model, model_name: str) -> None:
        self.layout, self.model, self.model_name = layout, model, model_name
        from mailagent.cli.demo_mail import DemoMailServer

        self.server = DemoMailServer(AGENT, secrets.token_urlsafe(16), host=HOST)
        self.replies = threading.Condition()
        self.service: subprocess.Popen[bytes] | None = None
        self._store: Store | None = None

    def on_reply(self, mail: Delivered) -> None:
        with self.replies:
            self.replies.notify_all()

    def start(self) -> None:
        self.server.on_owner_mail = self.on_reply
        self.server.start()
        write_files(self.layout, self.server, self.model, self.model_name)
        with self.layout.log.open("ab") as log:
            self.service = subprocess.Popen(
                [sys.executable, "-m", "mailagent", "run", "--config", str(self.layout.config)],
                stdout=log, stderr=log)

    def send_task(self, body: str, subject: str = TASK_SUBJECT) -> None:
        self.server.send(task_mail(body, subject), OWNER, AGENT)

    def wait_reply(self, count: int, timeout: float) -> Reply:
        """The `count`-th mail to the owner about a task, with what that task came to; fails if
        the service dies, the task ends with no mail reaching the owner, or time runs out."""
        deadline = time.monotonic() + timeout
        ended_at: float | None = None
        with self.replies:
            while True:
                mail = self.task_mail(count)
                if mail is not None:
                    return self.outcome(mail)
                self.fail_if_stopped()
                ended_at = ended_at or self.ended_silently()
                if ended_at is not None and time.monotonic() - ended_at > SILENT_END_SECONDS:
                    raise MailagentError(f"task {self.last_task()} ended but no mail reached "
                                         f"you; the service log is {self.layout.log}:\n"
                                         f"{self.log_tail()}")
                if time.monotonic() > deadline:
                    raise MailagentError(f"no reply within {timeout:g} s; the service log is "
                                         f"{self.layout.log}:\n{self.log_tail()}")
                self.replies.wait(0.25)

    def task_mail(self, count: int) -> Delivered | None:
        about_tasks = [m for m in self.server.owner_mail if _task_id(m) is not None]
        return about_tasks[count - 1] if len(about_tasks) >= count else None

    def fail_if_stopped(self) -> None:
        if self.service is not None and self.service.poll() is not None:
            raise MailagentError(f"the service stopped (exit {self.service.returncode}); its "
                                 f"log is {self.layout.log}:\n{self.log_tail()}")

    def tasks(self) -> list[TaskView]:
        """The service's tasks; none while it has not made its database yet. The demo only
        reads: migrating is the service's job."""
        from mailagent.store import Store

        if self._store is None and (self.layout.data / "mailagent.db").exists():
            self._store = Store.open(f"sqlite:///{self.layout.data / 'mailagent.db'}",
                                     migrate=False)
        try:
            return self._store.tasks() if self._store is not None else []
        except StoreError:  # tables not made yet
            return []

    def task_view(self, task_id: int) -> TaskView | None:
        found = [t for t in self.tasks() if t.task_id == task_id]
        return found[0] if found else None

    def last_task(self) -> str:
        tasks = self.tasks()
        return f"#{tasks[-1].task_id} ({tasks[-1].state}: {tasks[-1].reason})" if tasks else "?"

    def ended_silently(self) -> float | None:
        """When the newest task has ended and no mail about it is on its way, the time now."""
        tasks = self.tasks()
        if not tasks or tasks[-1].state not in ENDED or self._store is None:
            return None
        pending = [m for m in self._store.outbox(("queued", "sending", "sent", "unknown"))
                   if m.task_id == tasks[-1].task_id]
        return None if pending else time.monotonic()

    def outcome(self, mail: Delivered) -> Reply:
        task_id = _task_id(mail)
        view = self.task_view(task_id) if task_id is not None else None
        state = view.state if view is not None else "unknown"
        return Reply(mail, state, (view.reason if view is not None else None) or "")

    def log_tail(self, lines: int = 20) -> str:
        text = self.layout.log.read_text(encoding="utf-8", errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        if self.service is not None and self.service.poll() is None:
            self.service.send_signal(signal.SIGTERM)
            try:
                self.service.wait(30)
            except subprocess.TimeoutExpired:
                self.service.kill()
                self.service.wait()
        self.server.stop()
        if self._store is not None:
            self._store.close()


def _task_id(mail: Delivered) -> int | None:
    value = message_from_bytes(mail.raw, policy=email_policy.default)["X-Mailagent-Task"]
    return int(str(value)) if value is not None and str(value).isdigit() else None


def print_intro(demo: Demo) -> None:
    layout, server = demo.layout, demo.server
    endpoint = demo.model.base_url or "the Anthropic API (ANTHROPIC_API_KEY)"
    print(f"""mailagent demo in {layout.root}
  mail server: embedded, SMTP {HOST}:{server.smtp_port} and IMAP {HOST}:{server.imap_port}
  (loopback only; login {AGENT}, password {server.password})
  owner authentication: verification = "none" (the From address alone), acceptable here only
  because the mail server is embedded, on loopback, and takes mail only with this run's password;
  never use "none" with a real mailbox
  model: {demo.model_name} at {endpoint}
  policy: {layout.policies / 'demo.toml'} (read and write {layout.sample}, nothing else)
  service log: {layout.log}
""", flush=True)


def print_reply(demo: Demo, reply: Reply, before: dict[Path, int]) -> None:
    print(f"---- {reply.label} received by the embedded SMTP server ----")
    print(show_mail(reply.mail))
    print("---- end of mail ----\n")
    after = snapshot(demo.layout.outputs)
    changed = sorted(path for path, mtime in after.items() if before.get(path) != mtime)
    for path in changed:
        print(f"Output: {path}")
    if not changed:
        print(f"No file was written; the sample folder is {demo.layout.sample}")
    print(flush=True)


def keep_running(demo: Demo, timeout: float) -> None:
    """Mail each line typed as a new task and print its reply, until end of input or Ctrl-C."""
    print("The service keeps running. Type a task and press Enter to mail it (Ctrl-D or "
          "Ctrl-C to stop); or point a mail client at the servers above.", flush=True)
    count = len(demo.server.owner_mail)
    for line in sys.stdin:
        if not line.strip():
            continue
        before = snapshot(demo.layout.outputs)
        demo.send_task(line.strip(), subject=line.strip()[:60])
        count += 1
        print_reply(demo, demo.wait_reply(count, timeout), before)


def check_endpoint(model: Model, model_name: str) -> None:
    """Before anything starts: the endpoint answers and takes the key. An endpoint without the
    Models API (404) is let through; the task itself will tell."""
    from mailagent.agent.api import check_model  # the SDK takes a second to import
    from mailagent.config import ModelSettings

    key = env_value("ANTHROPIC_API_KEY") if model.has_key else "none"
    settings = ModelSettings(name=model_name, base_url=model.base_url, api_key=key,
                             max_retries=0)
    try:
        asyncio.run(check_model(settings))
    except ModelError as exc:
        if exc.status_code == 404:
            return
        where = model.base_url or "the Anthropic API"
        advice = ("check ANTHROPIC_API_KEY" if exc.status_code == 401 else
                  f"start the endpoint at {where}, or correct --base-url (ANTHROPIC_BASE_URL)")
        raise DemoFailed(f"{str(exc).rstrip('.')}. Nothing was started: {advice}.") from exc


class DemoFailed(MailagentError):
    """The demo ran, or tried to, and its task did not complete."""


def verdict(reply: Reply, demo: Demo) -> None:
    """Raise DemoFailed, with what to do, unless the reply is a completion."""
    if reply.state == "done":
        return
    _, what, advice = REPLY_KINDS.get(reply.state, ("mail", f"the task is {reply.state}",
                                                     "the service log is {log}"))
    advice = advice.format(log=demo.layout.log, endpoint=demo.model.base_url or
                           "the Anthropic API")
    reason = f": {reply.reason}" if reply.reason else ""
    raise DemoFailed(f"{what}{reason}; {advice}")


def cmd_demo(args: argparse.Namespace) -> int:
    model = find_model(args.base_url)
    if model is None:
        raise ConfigError(NO_MODEL)
    try:
        check_endpoint(model, args.model)
        run_demo(args, model)
    except DemoFailed as exc:
        print(f"mailagent demo: {exc}", file=sys.stderr)
        return 1
    return 0


def run_demo(args: argparse.Namespace, model: Model) -> None:
    root = Path(args.dir).expanduser().absolute() if args.dir else \
        Path(tempfile.mkdtemp(prefix="mailagent-demo-"))
    root.mkdir(parents=True, exist_ok=True)
    demo = Demo(Layout(root), model, args.model)
    try:
        demo.start()
        print_intro(demo)
        before = snapshot(demo.layout.outputs)
        body = TASK_BODY.format(sample=demo.layout.sample)
        print(f"Mailing a task from {OWNER} to {AGENT}:\n  {TASK_SUBJECT}: {body}\n", flush=True)
        demo.send_task(body)
        try:
            reply = demo.wait_reply(1, args.timeout)
        except MailagentError as exc:
            raise DemoFailed(str(exc)) from exc
        print_reply(demo, reply, before)
        if not args.keep:
            verdict(reply, demo)
        else:
            keep_running(demo, args.timeout)
    except KeyboardInterrupt:
        print("stopping")
    finally:
        demo.stop()


def add_demo_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    demo = sub.add_parser("demo", help="run the whole loop locally with an embedded mail server")
    demo.add_argument("--dir", help="demo folder (default: a new temporary folder)")
    demo.add_argument("--base-url", help="an Anthropic-compatible endpoint (default: "
                      "$ANTHROPIC_BASE_URL, else the Anthropic API with $ANTHROPIC_API_KEY)")
    demo.add_argument("--model", default=DEFAULT_MODEL, help=f"model name ({DEFAULT_MODEL})")
    demo.add_argument("--timeout", type=float, default=300.0,
                      help="seconds to wait for each reply (300)")
    demo.add_argument("--keep", action="store_true",
                      help="keep running after the first reply, mailing each line typed")
    demo.set_defaults(func=cmd_demo)
