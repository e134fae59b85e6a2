"""A phone's photos, scans and invitations through the whole service: Dovecot, the service
process, the strict model double (which records every request and refuses what the API
refuses) and, for an MCP tool's picture, a real MCP server."""

from __future__ import annotations

import io
import sys
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from pathlib import Path

from PIL import Image

from tests.support.dovecot import Dovecot
from tests.support.fixtures import MakeService
from tests.support.mail import AGENT, OWNER, PASS_RESULTS, owner_mail
from tests.support.media import (
    GPS_IFD,
    decoded,
    document_blocks,
    fenced,
    heic,
    image_blocks,
    invitation,
    photo,
    scanned_pdf,
)
from tests.support.model_server import ModelServer, text, tool_use
from tests.support.service import ServiceProcess, wait_until

REPO = Path(__file__).resolve().parents[1]


def done(service: ServiceProcess) -> None:
    store = service.store()
    wait_until(lambda: [t for t in store.tasks() if t.state == "done"], 30,
               f"a done task; log:\n{service.log()}")


def test_a_receipt_photo_mailed_from_a_phone_reaches_the_model_scaled_fenced_and_without_gps(
        service: ServiceProcess, dovecot: Dovecot, model_server: ModelServer) -> None:
    receipt, scan = photo(4032, 3024, orientation=6), scanned_pdf(2)
    assert Image.open(io.BytesIO(receipt)).getexif().get_ifd(GPS_IFD)
    dovecot.append(owner_mail("Expenses", "add this to expenses.xlsx", attachments=[
        ("IMG_2041.JPG", "image/jpeg", receipt),
        ("IMG_2042.HEIC", "image/heic", heic(3024, 4032)),
        ("scan.pdf", "application/pdf", scan)]))
    service.start()
    try:
        done(service)
        [request] = model_server.message_requests
        content = request.messages[0]["content"]
        assert "add this to expenses.xlsx" in content[0]["text"]
        jpeg, converted = image_blocks(request)
        for block in (jpeg, converted):
            before, after = fenced(content, block)
            assert before.startswith('<data kind="attachment"') and after.startswith("</data")
            assert block["source"]["media_type"] == "image/jpeg"
        image = Image.open(io.BytesIO(decoded(jpeg)))
        assert image.size == (928, 1238)  # upright, within 1568 px and 1.15 megapixels
        assert dict(image.getexif()) == {} and b"PhoneMaker" not in decoded(jpeg)
        assert 'name="IMG_2042.HEIC"' in fenced(content, converted)[0]
        [document] = document_blocks(request)
        assert decoded(document) == scan  # a scan goes whole: the API reads its page images
        assert 'name="scan.pdf"' in fenced(content, document)[0]
        assert service.stop() == 0
    finally:
        service.kill()


def invitation_mail() -> bytes:
    """An invitation as calendar apps send it: the .ics inline, inside multipart/alternative,
    with no file name; its DESCRIPTION is a stranger's words."""
    message = EmailMessage()
    message["Authentication-Results"] = PASS_RESULTS
    message["From"], message["To"] = f"Owner <{OWNER}>", AGENT
    message["Subject"], message["Date"] = "Fwd: Budget review", formatdate(localtime=True)
    message["Message-ID"] = make_msgid(domain="example.com")
    message.set_content("Can I make it?")
    message.add_alternative(invitation("Budget review").decode(), subtype="calendar",
                            params={"method": "REQUEST"})
    return message.as_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def test_an_inline_invitation_is_data_for_the_model_never_the_owners_typed_text(
        service: ServiceProcess, dovecot: Dovecot, model_server: ModelServer) -> None:
    dovecot.append(invitation_mail())
    service.start()
    try:
        done(service)
        [request] = model_server.message_requests
        first = request.messages[0]["content"][0]["text"]
        typed, data = first.split('<data kind="mail-subject"', 1)
        assert "Can I make it?" in typed and "BEGIN:VCALENDAR" not in first
        assert "Budget review" not in typed
        assert "Calendar (REQUEST: an invitation)" in data
        assert "starts: 2026-03-02 10:00 (Europe/Paris)" in data
        assert service.stop() == 0
    finally:
        service.kill()


def test_an_mcp_tools_picture_reaches_the_model_as_an_image_block_without_its_gps(
        tmp_path: Path, make_service: MakeService, dovecot: Dovecot,
        model_server: ModelServer) -> None:
    log = tmp_path / "ran.log"
    (tmp_path / "policies").mkdir(exist_ok=True)
    (tmp_path / "policies" / "notes.toml").write_text(
        f'[mcp.notes]\ncommand = "{sys.executable}"\n'
        f'args = ["-m", "tests.support.mcp_server", "stdio"]\ncwd = "{REPO}"\n'
        f'env = {{ NOTES_LOG = "{log}" }}\n[mcp.notes.tools]\nsnapshot = "allow"\n')
    service = make_service()
    model_server.script(tool_use("mcp__notes__snapshot", {"width": 3200}), text("A picture."))
    service.start()
    try:
        service.wait_for_log("MCP server notes running", timeout=60)
        dovecot.append(owner_mail("Snapshot", "Take a picture of my notes."))
        done(service)
        [result] = model_server.message_requests[1].tool_results
        assert [b["type"] for b in result["content"]] == ["text", "image", "text"]
        opening, image, closing = result["content"]
        assert opening["text"].startswith('<data kind="tool-output"')
        assert "Here is the picture." in opening["text"]
        assert closing["text"].startswith("</data")
        shown = Image.open(io.BytesIO(decoded(image)))
        assert max(shown.size) <= 1568 and dict(shown.getexif()) == {}
        assert log.read_text().splitlines() == ["snapshot 3200"]
        assert service.stop() == 0
    finally:
        service.kill()
