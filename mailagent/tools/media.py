"""Media: images and PDFs as the content blocks of the Messages API, made safe to send.

In: the bytes of one file (a mail's attachment, a file read_file opened, an image an MCP tool
returned) and a name to call it by. Out: `Media`, a line saying what it is and the image or
document blocks the model sees, and the token cost of such blocks for the context budget.
Raises MediaError (a ToolError) for a file that is broken, too large or not of a kind the API
takes, with a reason the model or the owner can act on. Pure: no I/O.

Images are decoded (JPEG, PNG, GIF, WebP, and HEIC/HEIF from iPhones, through pillow-heif),
turned upright by their EXIF orientation, scaled to the size the API would scale them to
anyway, and encoded afresh from their pixels alone, so that no EXIF (GPS position, camera,
time), XMP or ICC profile leaves the machine. PDFs go as they are, once their pages are
counted. The limits are the API's, from https://docs.claude.com/en/docs/build-with-claude/vision
and https://docs.claude.com/en/docs/build-with-claude/pdf-support.
It must never decode an image of more than MAX_SOURCE_PIXELS, and never hand on an image it
did not encode itself. The only importer of PIL (Pillow) and pillow_heif, and only when an image
first arrives.
"""

from __future__ import annotations

import base64
import binascii
import collections
import functools
import hashlib
import io
import math
import struct
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mailagent.tools import ToolError
from mailagent.tools.documents import pdf_pages

if TYPE_CHECKING:
    from PIL.Image import Image

# "If your image's long edge is more than 1568 pixels, or your image is more than ~1,600
# tokens, it will first be scaled down ... we recommend resizing images to no more than 1.15
# megapixels (and within 1568 pixels in both dimensions)" (the vision page): larger costs time,
# never detail.
MAX_EDGE_PX = 1568
MAX_PIXELS = 1_150_000
TOKEN_PIXELS = 750  # "tokens = (width px * height px)/750"
# "image exceeds 5 MB maximum: N bytes > 5242880 bytes": the API counts the base64 text.
MAX_IMAGE_BASE64 = 5 * 1024 * 1024
# "100 per request on the API" (600 for larger windows, 20 on claude.ai); over 20 images the
# largest dimension allowed falls to 2000 px. 20 keeps every model and endpoint content.
MAX_IMAGES_PER_REQUEST = 20
# PDF support: "Maximum request size 32MB", "Maximum pages per request 100".
MAX_REQUEST_BYTES = 32 * 1024 * 1024
MAX_PDF_PAGES_PER_REQUEST = 100
MAX_MEDIA_BASE64_PER_REQUEST = 24 * 1024 * 1024  # what is left of 32 MB for the text
MAX_PDF_BYTES = 16 * 1024 * 1024  # 21.3 MB as base64, under the share above
# "Each page typically uses 1,500-3,000 tokens per page depending on content density" and
# "since each page is converted into an image, the same image-based cost calculations are
# applied": the text's upper figure and a page image at the size above.
PDF_PAGE_TOKENS = 3_000 + MAX_PIXELS // TOKEN_PIXELS
# What is decoded at all: a 108 MP phone photo is 12000x9000; beyond that it is a bomb.
MAX_SOURCE_PIXELS = 130_000_000
JPEG_QUALITIES = (85, 70, 50)

IMAGE_TYPES = {"JPEG": "image/jpeg", "PNG": "image/png", "GIF": "image/gif",
               "WEBP": "image/webp", "HEIF": "image/heic"}
IMAGE_SUFFIXES = frozenset({"jpg", "jpeg", "png", "gif", "webp", "heic", "heif"})
SHOWN = "JPEG, PNG, GIF, WebP or HEIC"


class MediaError(ToolError):
    """An image or PDF that cannot be shown to the model; the message says why."""


@dataclass(frozen=True)
class Media:
    """What the model is shown of one file: a line of text about it, and its blocks."""

    text: str
    blocks: tuple[dict[str, Any], ...]


def is_image_name(name: str, content_type: str = "") -> bool:
    suffix = name.rsplit(".", 1)[-1].lower() if "." in name else ""
    return suffix in IMAGE_SUFFIXES or content_type.lower() in (*IMAGE_TYPES.values(),
                                                                 "image/heif", "image/jpg")


def is_pdf_name(name: str, content_type: str = "") -> bool:
    return name.lower().endswith(".pdf") or content_type.lower() == "application/pdf"


@functools.cache
def _pillow() -> Any:
    """PIL with the HEIF opener registered, imported once an image arrives."""
    import pillow_heif
    from PIL import Image

    pillow_heif.register_heif_opener()
    return Image


def _open(data: bytes, name: str) -> Image:
    pil = _pillow()
    try:
        with warnings.catch_warnings():  # our own bound is checked below, before decoding
            warnings.simplefilter("ignore", pil.DecompressionBombWarning)
            image: Image = pil.open(io.BytesIO(data), formats=list(IMAGE_TYPES))
    except pil.DecompressionBombError as exc:
        raise MediaError(f"{name} has more pixels than the {MAX_SOURCE_PIXELS // 1_000_000} "
                         "megapixels that are read at all") from exc
    except Exception as exc:  # a third-party parser on hostile input: any failure is the file's
        raise MediaError(f"{name} is not an image that can be shown ({SHOWN}): "
                         f"{type(exc).__name__}") from exc
    width, height = image.size
    if width * height > MAX_SOURCE_PIXELS:
        raise MediaError(f"{name} is {width}x{height} pixels, over the "
                         f"{MAX_SOURCE_PIXELS // 1_000_000} megapixels that are read at all")
    return image


def scale_for(width: int, height: int) -> float:
    """The factor that brings an image within MAX_EDGE_PX and MAX_PIXELS (never above 1)."""
    return min(1.0, MAX_EDGE_PX / max(width, height, 1),
               math.sqrt(MAX_PIXELS / max(width * height, 1)))


def _upright(image: Image) -> Image:
    """The first frame, decoded (at a reduced scale where JPEG allows), turned as its EXIF
    orientation says, and scaled within the limits."""
    from PIL import ImageOps

    scale = scale_for(*image.size)
    if image.format == "JPEG" and scale < 1:  # decode at 1/2, 1/4 or 1/8 of the size
        image.draft("RGB", (int(image.width * scale) + 1, int(image.height * scale) + 1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a broken EXIF block is the file's, not ours
        upright = ImageOps.exif_transpose(image)
    scale = scale_for(*upright.size)
    if scale < 1:
        size = (max(1, int(upright.width * scale)), max(1, int(upright.height * scale)))
        upright = upright.resize(size, _pillow().Resampling.LANCZOS)
    return upright


def _pixels_only(image: Image, keep_alpha: bool) -> Image:
    """A new image made of the pixels alone: no EXIF, XMP, ICC profile or comment."""
    pil = _pillow()
    mode = "RGBA" if keep_alpha else "RGB"
    if keep_alpha or image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        if not keep_alpha:  # flattened on white, as a page would show it
            background = pil.new("RGBA", rgba.size, (255, 255, 255, 255))
            rgba = pil.alpha_composite(background, rgba)
        image = rgba
    converted = image.convert(mode)
    clean: Image = pil.frombytes(mode, converted.size, converted.tobytes())
    return clean


def _encoded(image: Image, lossless: bool) -> tuple[bytes, str]:
    """PNG for graphics (screenshots, drawings) while it fits, else JPEG; bytes and type."""
    has_alpha = image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info
    if lossless:
        out = io.BytesIO()
        _pixels_only(image, keep_alpha=has_alpha).save(out, "PNG")
        if len(out.getvalue()) * 4 // 3 + 4 <= MAX_IMAGE_BASE64:
            return out.getvalue(), "image/png"
    clean = _pixels_only(image, keep_alpha=False)
    for quality in JPEG_QUALITIES:
        out = io.BytesIO()
        clean.save(out, "JPEG", quality=quality, optimize=True)
        if len(out.getvalue()) * 4 // 3 + 4 <= MAX_IMAGE_BASE64:
            return out.getvalue(), "image/jpeg"
    raise MediaError("the image does not fit in 5 MB even at low quality")


def image_media(data: bytes, name: str) -> Media:
    """An image as one image block, upright, scaled and without metadata."""
    image = _open(data, name)
    source_format, (width, height) = image.format or "?", image.size
    try:
        shown = _upright(image)
        payload, media_type = _encoded(shown, lossless=source_format in ("PNG", "GIF"))
    except MediaError:
        raise
    except Exception as exc:  # truncated or corrupt pixel data shows only when decoded
        raise MediaError(f"{name} could not be decoded as an image: {type(exc).__name__}: "
                         f"{str(exc)[:200]}") from exc
    return _image_block(payload, media_type, name, source_format, shown.size, (width, height))


def _image_block(payload: bytes, media_type: str, name: str, source_format: str,
                 shown: tuple[int, int], source: tuple[int, int]) -> Media:
    block = {"type": "image", "source": {"type": "base64", "media_type": media_type,
                                         "data": base64.b64encode(payload).decode("ascii")}}
    scaled = "" if shown == source else f", scaled from {source[0]}x{source[1]}"
    text = (f"image {name}: {source_format} {shown[0]}x{shown[1]} px{scaled}; "
            "re-encoded without its metadata (EXIF, location)")
    return Media(text, (block,))


def screenshot_media(xwd: bytes, name: str) -> tuple[Media, bytes]:
    """A screen grabbed by `xwd` (a TrueColor ZPixmap of 24 or 32 bits a pixel, as Xvfb's
    screen is) as an image block, and the image's bytes to keep. Pillow reads no XWD: its
    header is 25 big-endian 32-bit fields, then colours, then the rows (X11's XWDFile.h)."""
    if len(xwd) < 100:
        raise MediaError(f"{name}: the screenshot is empty")
    (size, _version, pixmap_format, _depth, width, height, _x, byte_order, _unit, _bit_order,
     _pad, bits, row_bytes, _visual, red, _green, blue, _rgb_bits, _entries,
     colours) = struct.unpack(">20I", xwd[:80])
    start = size + colours * 12
    if pixmap_format != 2 or bits not in (24, 32) or width * height > MAX_SOURCE_PIXELS \
            or len(xwd) < start + row_bytes * height or (red, blue) != (0xFF0000, 0xFF):
        raise MediaError(f"{name}: not a screenshot of a TrueColor screen "
                         f"({width}x{height}, {bits} bits a pixel)")
    raw = ("BGRX" if byte_order == 0 else "XRGB") if bits == 32 else \
        ("BGR" if byte_order == 0 else "RGB")
    image = _pillow().frombuffer("RGB", (width, height), xwd[start:start + row_bytes * height],
                                 "raw", raw, row_bytes, 1)
    png = io.BytesIO()
    image.save(png, "PNG")  # made here from the pixels alone: there is nothing to strip
    kept = png.getvalue()
    if scale_for(width, height) == 1 and len(kept) * 4 // 3 + 4 <= MAX_IMAGE_BASE64:
        return _image_block(kept, "image/png", name, "PNG", (width, height),
                            (width, height)), kept  # shown as it is kept: encoded once
    return image_media(kept, name), kept


def pdf_media(data: bytes, name: str) -> Media:
    """A PDF as one document block: the API reads its text and an image of every page, so a
    scan is read too. MediaError when it has more pages or bytes than one request takes."""
    if len(data) > MAX_PDF_BYTES:
        raise MediaError(f"{name} is {len(data)} bytes, over the {MAX_PDF_BYTES} bytes a PDF "
                         "may have to be shown whole")
    pages = pdf_pages(data, name)
    if pages > MAX_PDF_PAGES_PER_REQUEST:
        raise MediaError(f"{name} has {pages} pages, over the {MAX_PDF_PAGES_PER_REQUEST} "
                         "pages the model can see in one request")
    block = {"type": "document", "source": {"type": "base64", "media_type": "application/pdf",
                                            "data": base64.b64encode(data).decode("ascii")}}
    return Media(f"PDF {name}: {pages} page{'s' if pages != 1 else ''}, {len(data)} bytes",
                 (block,))


# ---------------------------------------------------------------- what blocks cost


def base64_source(block: Any) -> tuple[str, str] | None:
    """(type, base64 data) of an image or document block with a base64 source, else None."""
    if not isinstance(block, dict) or block.get("type") not in ("image", "document"):
        return None
    source = block.get("source")
    if not isinstance(source, dict) or source.get("type") != "base64":
        return None
    data = source.get("data")
    return (str(block["type"]), data) if isinstance(data, str) else None


def block_tokens(block: Any) -> int | None:
    """The tokens an image or PDF block costs (width*height/750 for an image, PDF_PAGE_TOKENS
    a page), or None for any other block. Data that does not decode counts a token for
    every three characters, as text would."""
    found = base64_source(block)
    if found is None:
        return None
    kind, data = found
    return _image_tokens(data) if kind == "image" else pdf_block_pages(block) * PDF_PAGE_TOKENS


class _Memo:
    """What was worked out for a block's data, kept by a digest of the data: a cache that
    holds on to the megabytes of every image it saw would keep them after their
    conversation let go of them."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.known: collections.OrderedDict[bytes, int] = collections.OrderedDict()
        self.lock = threading.Lock()  # conversations run in threads of their own

    def get(self, data: str, work: Callable[[str], int]) -> int:
        key = hashlib.blake2b(data.encode("ascii", "replace"), digest_size=16).digest()
        with self.lock:
            if key in self.known:
                self.known.move_to_end(key)
                return self.known[key]
        value = work(data)
        with self.lock:
            self.known[key] = value
            if len(self.known) > self.size:
                self.known.popitem(last=False)
        return value


_IMAGE_TOKENS = _Memo(256)
_PDF_PAGES = _Memo(64)


def _image_tokens(data: str) -> int:
    return _IMAGE_TOKENS.get(data, _image_tokens_of)


def _image_tokens_of(data: str) -> int:
    try:  # the header is enough for the size: our images carry no metadata before it
        head = base64.b64decode(data[:65536], validate=False)
        size: tuple[int, int] = _pillow().open(io.BytesIO(head)).size
    except Exception:
        return len(data) // 3 + 1
    scale = scale_for(*size)  # what the API scales a larger image to
    return math.ceil(size[0] * scale * size[1] * scale / TOKEN_PIXELS)


def pdf_block_pages(block: Any) -> int:
    """The pages of a PDF document block; undecodable data counts as many as it could be."""
    found = base64_source(block)
    return _pdf_pages_of(found[1]) if found else 0


def _pdf_pages_of(data: str) -> int:
    return _PDF_PAGES.get(data, _count_pdf_pages)


def _count_pdf_pages(data: str) -> int:
    try:
        return pdf_pages(base64.b64decode(data, validate=True), "document")
    except (ToolError, binascii.Error, ValueError):
        return max(1, len(data) // 100_000)


# ---------------------------------------------------------------- what a file is

_MAGIC = ((b"\xff\xd8\xff", "image"), (b"\x89PNG\r\n\x1a\n", "image"), (b"GIF87a", "image"),
          (b"GIF89a", "image"), (b"%PDF-", "pdf"))


def _sniffed(data: bytes) -> str | None:
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image"
    if data[4:12] in (b"ftypheic", b"ftypheix", b"ftypmif1", b"ftypheif", b"ftyphevc"):
        return "image"
    return next((kind for magic, kind in _MAGIC if data.startswith(magic)), None)


def media_of(name: str, data: bytes, content_type: str = "") -> Media | None:
    """The blocks that show `data` to the model if it is an image or a PDF (by its name, its
    declared type or its first bytes), else None; MediaError when it is one and cannot be
    shown."""
    kind = _sniffed(data) or ("image" if is_image_name(name, content_type) else
                              "pdf" if is_pdf_name(name, content_type) else None)
    if kind == "image":
        return image_media(data, name)
    if kind == "pdf":
        return pdf_media(data, name)
    return None
