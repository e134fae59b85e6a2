"""Images, PDFs, invitations and contact cards made at test time, as a phone would send them.

`photo` is a JPEG with an EXIF block (orientation and a GPS position, as a phone camera writes
them); `heic` an iPhone's HEIC; `scanned_pdf` a PDF whose pages are images only (no text layer);
`invitation` and `contact_card` an .ics and a .vcf. `image_blocks` and `fenced` read what a
recorded request carries.
"""

from __future__ import annotations

import base64
import io
from typing import TYPE_CHECKING, Any

from PIL import Image, ImageDraw

from tests.support.api_media import media_blocks

if TYPE_CHECKING:  # the MCP test server imports this module too: it stays light
    from tests.support.model_server import RecordedRequest

GPS_IFD = 0x8825
ORIENTATION = 0x0112
# 48 deg 51' 24" N, 2 deg 21' 3" E: somewhere the owner would not want a stranger to know.
GPS = {1: "N", 2: (48.0, 51.0, 24.0), 3: "E", 4: (2.0, 21.0, 3.0)}


def picture(width: int, height: int, words: str = "") -> Image.Image:
    image = Image.new("RGB", (width, height), (250, 250, 245))
    draw = ImageDraw.Draw(image)
    draw.rectangle((width // 10, height // 10, width // 2, height // 2), fill=(30, 90, 160))
    if words:
        draw.text((width // 10, height * 3 // 5), words, fill=(0, 0, 0))
    return image


def photo(width: int = 4032, height: int = 3024, orientation: int = 1,
          words: str = "TOTAL 42.50 EUR") -> bytes:
    """A camera JPEG: EXIF with its orientation and the GPS position above."""
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    exif[0x010F] = "PhoneMaker"
    exif[GPS_IFD] = GPS
    out = io.BytesIO()
    picture(width, height, words).save(out, "JPEG", quality=90, exif=exif.tobytes())
    return out.getvalue()


def png(width: int = 800, height: int = 600) -> bytes:
    out = io.BytesIO()
    picture(width, height, "screenshot").save(out, "PNG")
    return out.getvalue()


def heic(width: int = 3024, height: int = 4032) -> bytes:
    import pillow_heif

    pillow_heif.register_heif_opener()
    out = io.BytesIO()
    picture(width, height, "HEIC").save(out, "HEIF", quality=60)
    return out.getvalue()


def scanned_pdf(pages: int = 2) -> bytes:
    """A scan: every page an image, no text to extract."""
    images = [picture(850, 1100, f"page {n}").convert("RGB") for n in range(1, pages + 1)]
    out = io.BytesIO()
    images[0].save(out, "PDF", save_all=True, append_images=images[1:], resolution=100)
    return out.getvalue()


def invitation(summary: str = "Budget review") -> bytes:
    return "\r\n".join([
        "BEGIN:VCALENDAR", "VERSION:2.0", "PRODID:-//Example//Calendar//EN", "METHOD:REQUEST",
        "BEGIN:VEVENT", "UID:budget-2026@example.org", "DTSTAMP:20260301T090000Z",
        "DTSTART;TZID=Europe/Paris:20260302T100000", "DTEND;TZID=Europe/Paris:20260302T110000",
        f"SUMMARY:{summary}", "LOCATION:Room 4", "ORGANIZER;CN=Alice:mailto:alice@example.org",
        "ATTENDEE;CN=Owner;PARTSTAT=NEEDS-ACTION:mailto:owner@example.com",
        "END:VEVENT", "END:VCALENDAR", ""]).encode()


def contact_card() -> bytes:
    return "\r\n".join(["BEGIN:VCARD", "VERSION:3.0", "FN:Jane Doe", "N:Doe;Jane;;;",
                        "ORG:Acme", "TEL;TYPE=CELL:+33 6 12 34 56 78",
                        "EMAIL;TYPE=WORK:jane@acme.example", "END:VCARD", ""]).encode()


def decoded(block: dict[str, Any]) -> bytes:
    return base64.b64decode(block["source"]["data"])


def image_blocks(request: RecordedRequest) -> list[dict[str, Any]]:
    return [block for _, block in media_blocks(request.body) if block["type"] == "image"]


def document_blocks(request: RecordedRequest) -> list[dict[str, Any]]:
    return [block for _, block in media_blocks(request.body) if block["type"] == "document"]


def fenced(content: list[dict[str, Any]], block: dict[str, Any]) -> tuple[str, str]:
    """The text blocks just before and just after `block` in `content` (its fence)."""
    index = next(i for i, b in enumerate(content) if b is block or b == block)
    return content[index - 1]["text"], content[index + 1]["text"]
