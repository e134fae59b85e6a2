"""What the real Messages API refuses in image and document blocks, and what they cost.

Rules for tests/support/api_rules.py: each is a pure function of a request body returning the
API's own error message, or None. The pages that state the limits:
https://docs.claude.com/en/docs/build-with-claude/vision (JPEG, PNG, GIF and WebP; "larger than
8000x8000 px, it will be rejected"; "more than 20 images in one API request, this limit is
2000x2000 px"; 100 images per request; "tokens = (width px * height px)/750"),
https://docs.claude.com/en/docs/build-with-claude/pdf-support ("Maximum pages per request 100")
and https://docs.claude.com/en/api/messages (image sources; document sources: base64 with
media_type application/pdf, or text with text/plain). The messages are worded as the API words
them in its 400 invalid_request_error answers (as reported back by its users: "image exceeds 5
MB maximum: N bytes > 5242880 bytes", "Input should be 'image/jpeg', 'image/png', 'image/gif' or
'image/webp'", "The image was specified using the image/jpeg media type, but the image appears
to be a image/png image", "A maximum of 100 PDF pages may be provided.", ...). Blocks inside a
tool_result's content are checked too, under `...tool_result.content.N`.
"""

from __future__ import annotations

import base64
import binascii
import io
import math
from collections.abc import Iterator, Mapping
from typing import Any

IMAGE_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp")
FORMATS = {"JPEG": "image/jpeg", "PNG": "image/png", "GIF": "image/gif", "WEBP": "image/webp"}
MAX_IMAGE_BASE64 = 5 * 1024 * 1024
MAX_IMAGES = 100
MAX_EDGE = 8000
MAX_EDGE_MANY = 2000  # over MANY_IMAGES images in one request
MANY_IMAGES = 20
MAX_PDF_PAGES = 100


def media_blocks(body: Mapping[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(path, block) of every image and document block of the request's messages, tool
    results included, in order."""
    for index, message in enumerate(body.get("messages") or []):
        content = message.get("content") if isinstance(message, dict) else None
        for number, block in enumerate(content if isinstance(content, list) else []):
            if not isinstance(block, dict):
                continue
            path = f"messages.{index}.content.{number}"
            if block.get("type") in ("image", "document"):
                yield path, block
            inner = block.get("content") if block.get("type") == "tool_result" else None
            for place, part in enumerate(inner if isinstance(inner, list) else []):
                if isinstance(part, dict) and part.get("type") in ("image", "document"):
                    yield f"{path}.tool_result.content.{place}", part


def _decoded(data: Any) -> bytes | None:
    if not isinstance(data, str):
        return None
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        return None


def image_size(raw: bytes) -> tuple[str, int, int] | None:
    """(format, width, height) of image bytes, or None if they are no image of the four."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(raw), formats=list(FORMATS)) as image:
            return str(image.format), image.width, image.height
    except (UnidentifiedImageError, OSError, ValueError):
        return None


def pdf_pages(raw: bytes) -> int | None:
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    try:
        reader = PdfReader(io.BytesIO(raw))
        return None if reader.is_encrypted else len(reader.pages)
    except (PdfReadError, OSError, ValueError, KeyError, TypeError):
        return None


def _image_problem(path: str, block: dict[str, Any], max_edge: int) -> str | None:
    source = block.get("source")
    kind = source.get("type") if isinstance(source, dict) else None
    if not isinstance(source, dict) or kind not in ("base64", "url", "file"):
        return (f"{path}.image.source: Input tag '{kind}' found using 'type' does not match "
                "any of the expected tags: 'base64', 'url', 'file'")
    if source["type"] != "base64":
        return None
    media_type = source.get("media_type")
    if media_type not in IMAGE_TYPES:
        return (f"{path}.image.source.base64.media_type: Input should be 'image/jpeg', "
                "'image/png', 'image/gif' or 'image/webp'")
    raw = _decoded(source.get("data"))
    if raw is None:
        return f"{path}.image.source.base64: invalid base64 data"
    if len(source["data"]) > MAX_IMAGE_BASE64:
        return (f"{path}.image.source.base64: image exceeds 5 MB maximum: "
                f"{len(source['data'])} bytes > {MAX_IMAGE_BASE64} bytes")
    found = image_size(raw)
    if found is None:
        return (f"{path}.image.source.base64.data: Image does not match the provided media "
                f"type {media_type}")
    kind, width, height = found
    if FORMATS[kind] != media_type:
        return (f"{path}.image.source.base64: The image was specified using the {media_type} "
                f"media type, but the image appears to be a {FORMATS[kind]} image")
    if max(width, height) > max_edge:
        many = " for many-image requests" if max_edge == MAX_EDGE_MANY else ""
        return (f"{path}.image.source.base64.data: At least one of the image dimensions exceed "
                f"max allowed size{many}: {max_edge} pixels")
    return None


def _document_problem(path: str, block: dict[str, Any]) -> tuple[str | None, int]:
    """The refusal of one document block, or None, and its PDF pages."""
    source = block.get("source")
    kind = source.get("type") if isinstance(source, dict) else None
    if not isinstance(source, dict) or kind not in ("base64", "text", "content", "url", "file"):
        return (f"{path}.document.source: Input tag '{kind}' found using 'type' does not match "
                "any of the expected tags: 'base64', 'text', 'content', 'url', 'file'"), 0
    if kind == "text":
        if source.get("media_type") != "text/plain":
            return f"{path}.document.source.text.media_type: Input should be 'text/plain'", 0
        return None, 0
    if kind != "base64":
        return None, 0
    if source.get("media_type") != "application/pdf":
        return f"{path}.document.source.base64.media_type: Input should be 'application/pdf'", 0
    raw = _decoded(source.get("data"))
    if raw is None:
        return f"{path}.document.source.base64: invalid base64 data", 0
    pages = pdf_pages(raw)
    if pages is None:
        return f"{path}.pdf.source.base64.data: The PDF specified was not valid.", 0
    return None, pages


def media_is_valid(body: Mapping[str, Any]) -> str | None:
    """Image and document blocks as the API takes them (see the module docstring)."""
    blocks = list(media_blocks(body))
    images = [(path, block) for path, block in blocks if block.get("type") == "image"]
    if len(images) > MAX_IMAGES:
        return f"A maximum of {MAX_IMAGES} images may be provided."
    max_edge = MAX_EDGE_MANY if len(images) > MANY_IMAGES else MAX_EDGE
    pages = 0
    for path, block in blocks:
        if block.get("type") == "image":
            problem = _image_problem(path, block, max_edge)
        else:
            problem, count = _document_problem(path, block)
            pages += count
        if problem is not None:
            return problem
    if pages > MAX_PDF_PAGES:
        return f"A maximum of {MAX_PDF_PAGES} PDF pages may be provided."
    return None


def media_tokens(block: Mapping[str, Any]) -> int | None:
    """What an image or PDF block costs (width*height/750; a PDF page as its text, about 3,000
    at most, and its page image), or None for other blocks; the double's token counts use it
    so that an image is not counted as its base64 text."""
    source = block.get("source") if block.get("type") in ("image", "document") else None
    raw = _decoded(source.get("data")) if isinstance(source, dict) else None
    if raw is None:
        return None
    if block["type"] == "image":
        found = image_size(raw)
        return math.ceil(found[1] * found[2] / 750) if found else None
    pages = pdf_pages(raw)
    return pages * 4_500 if pages is not None else None
