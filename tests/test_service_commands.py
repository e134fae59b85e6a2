"""run_command end to end: a mailed CSV becomes a chart and a spreadsheet made by a script in the
sandbox; without a sandbox the tool is not offered; cancel kills a running command."""

from __future__ import annotations

import csv
import email
import io
import os
import subprocess
import sys
import time
from email.message import EmailMessage
from email.policy import default as default_policy
from pathlib import Path

import openpyxl
from PIL import Image

from tests.support.config import write_config
from tests.support.dovecot import Dovecot
from tests.support.mail import owner_mail
from tests.support.model_server import ModelServer, text, tool_use, tool_uses
from tests.support.service import ServiceProcess, wait_until
from tests.support.smtp import SmtpServer

POLICY = """
[commands]
allow = ["python3", "sh"]
timeout_seconds = 60
"""

SCRIPT = """\
import csv
import matplotlib.pyplot as plt
import openpyxl

with open("attachments/mail-1/a1.csv", newline="") as handle:
    rows = list(csv.reader(handle))
header, data = rows[0], [(month, float(sales)) for month, sales in rows[1:]]

book = openpyxl.Workbook()
sheet = book.active
sheet.title = "Sales"
sheet.append(header)
for month, sales in data:
    sheet.append([month, sales])
sheet.append(["Total", sum(sales for _, sales in data)])
book.save("sales.xlsx")

figure, axes = plt.subplots(figsize=(4, 3), dpi=100)
axes.bar([m for m, _ in data], [s for _, s in data])
axes.set_title("Sales by month")
figure.savefig("sales.png")
print("made", len(data), "rows")
"""


def start_service(tmp_path: Path, dovecot: Dovecot, smtp: SmtpServer, model: ModelServer,
                  env: dict[str, str] | None = None) -> ServiceProcess:
    (tmp_path / "policies").mkdir(exist_ok=True)
    (tmp_path / "policies" / "commands.toml").write_text(POLICY)
    service = ServiceProcess(write_config(tmp_path, dovecot.imap_port, smtp.port,
                                          model_url=model.base_url))
    service.env.update(env or {})
    return service


def parsed(raw: bytes) -> EmailMessage:
    message = email.message_from_bytes(raw, policy=default_policy)
    assert isinstance(message, EmailMessage)
    return message


def test_a_mailed_csv_comes_back_as_a_chart_and_a_spreadsheet(
        tmp_path: Path, dovecot: Dovecot, smtp_server: SmtpServer,
        model_server: ModelServer) -> None:
    table = io.StringIO()
    csv.writer(table).writerows([["month", "sales"], ["Jan", "120"], ["Feb", "95.5"],
                                 ["Mar", "143"]])
    model_server.script(
        tool_use("write_file", {"path": "make.py", "content": SCRIPT}),
        tool_use("run_command", {"command": "python3 make.py"}),
        tool_uses([("attach_file", {"path": "sales.png"}),
                   ("attach_file", {"path": "sales.xlsx"})]),
        text("The chart and the spreadsheet are attached."))
    service = start_service(tmp_path, dovecot, smtp_server, model_server)
    dovecot.append(owner_mail("Chart my sales", "Make a chart and a spreadsheet of this.",
                              attachments=[("sales.csv", "text/csv", table.getvalue().encode())]))
    service.start()
    try:
        [mail] = smtp_server.wait_for(1, timeout=60)
        run = model_server.message_requests[2].tool_results[0]
        assert "exit code 0" in str(run["content"]) and "made 3 rows" in str(run["content"])
        assert not run.get("is_error")
        files = {part.get_filename(): part.get_content()
                 for part in parsed(mail.raw).iter_attachments()}
        assert sorted(files) == ["sales.png", "sales.xlsx"]
        book = openpyxl.load_workbook(io.BytesIO(files["sales.xlsx"]))
        rows = list(book["Sales"].iter_rows(values_only=True))
        assert rows == [("month", "sales"), ("Jan", 120), ("Feb", 95.5), ("Mar", 143),
                        ("Total", 358.5)]
        image = Image.open(io.BytesIO(files["sales.png"]))
        image.verify()
        assert image.format == "PNG" and image.size == (400, 300)
        # The chart shows in the body too, from a part of the mail itself.
        reply = parsed(mail.raw)
        related = reply.get_body(("related",))
        assert related is not None
        [html_part, picture] = list(related.iter_parts())
        assert picture.get_content() == files["sales.png"]
        assert f'src="cid:{str(picture["Content-ID"]).strip("<>")}"' in html_part.get_content()
        # make.py was written in the conversation's workspace: counted, not listed by name.
        plain = reply.get_body(("plain",))
        assert plain is not None
        assert "Changed files" not in plain.get_content()
        assert "1 file change in this conversation's workspace." in plain.get_content()
        assert "make.py" not in plain.get_content()
        assert service.stop() == 0
    finally:
        service.kill()


def test_without_a_sandbox_run_command_is_not_offered_and_check_says_why(
        tmp_path: Path, dovecot: Dovecot, smtp_server: SmtpServer,
        model_server: ModelServer) -> None:
    no_bwrap = {"PATH": str(Path(sys.executable).parent)}  # bubblewrap is not on this PATH
    service = start_service(tmp_path, dovecot, smtp_server, model_server, env=no_bwrap)
    check = subprocess.run([sys.executable, "-m", "mailagent", "check", "--config",
                            str(service.config_path)], capture_output=True, text=True,
                           env={**os.environ, **service.env}, timeout=60, check=False)
    assert check.returncode == 1
    assert "run_command is NOT offered" in check.stdout
    assert "apt install bubblewrap" in check.stdout
    dovecot.append(owner_mail("Run something", "Run python3 for me."))
    service.start()
    try:
        [request] = wait_until(lambda: [r for r in model_server.message_requests
                                        if "tools" in r.body], 30, "the task's model request")
        offered = {tool["name"] for tool in request.body["tools"]}
        assert "run_command" not in offered and "read_file" in offered
        assert "run_command" not in request.body["system"][0]["text"]
    finally:
        service.kill()


def test_cancel_by_mail_kills_a_running_command(
        tmp_path: Path, dovecot: Dovecot, smtp_server: SmtpServer,
        model_server: ModelServer) -> None:
    marker = "sleep 913"
    model_server.script(tool_use("run_command", {"command": f"sh -c '/bin/{marker}'"}))
    service = start_service(tmp_path, dovecot, smtp_server, model_server)
    task = owner_mail("Wait a long time", "Run the long job.")
    dovecot.append(task)
    service.start()
    try:
        wait_until(lambda: _running(marker), 30, "the command to start")
        ours = parsed(task)["Message-ID"]
        dovecot.append(owner_mail("Re: Wait a long time", "cancel", in_reply_to=ours))
        started = time.monotonic()
        wait_until(lambda: not _running(marker), 15, "the command to be killed")
        assert time.monotonic() - started < 10
        store = service.store()
        wait_until(lambda: [t.state for t in store.tasks()] == ["cancelled"], 10, "cancelled")
    finally:
        service.kill()


def _running(marker: str) -> bool:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker.encode() in (entry / "cmdline").read_bytes():
                    return True
            except OSError:
                continue
    return False
