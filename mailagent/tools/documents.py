"""Documents: the text of .pdf, .docx, .xlsx, .ics and .vcf files, for read_file; a PDF's pages.

In: the bytes of one file (already bounded by read_file) and its name. Out: plain text, or None
when the file is not a document this module reads (calendars and contact cards are read by
tools/cards.py); the number of pages of a PDF. Raises ToolError for a document that is
broken, encrypted or would unpack past the limits.
It must never unpack an archive past MAX_UNPACKED_BYTES or MAX_RATIO, and never write anything.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Callable, Iterator
from typing import Any

from mailagent.tools import ToolError
from mailagent.tools.cards import calendar_text, contacts_text

MAX_UNPACKED_BYTES = 64 * 1024 * 1024
MAX_RATIO = 200  # unpacked / packed: office files are ~10, zip bombs are thousands
MAX_PDF_PAGES = 300
MAX_SHEET_ROWS = 5000


def document_text(name: str, data: bytes) -> str | None:
    """The text of a PDF, Word or Excel file; None for any other kind of file."""
    readers: dict[str, Callable[[bytes], str]] = {
        ".pdf": _pdf_text, ".docx": _docx_text, ".xlsx": _xlsx_text, ".xlsm": _xlsx_text,
        ".ics": calendar_text, ".vcs": calendar_text, ".vcf": contacts_text,
        ".vcard": contacts_text}
    suffix = name[name.rfind("."):].lower() if "." in name else ""
    reader = readers.get(suffix)
    if reader is None:
        return None
    try:
        return reader(data)
    except ToolError:
        raise
    except Exception as exc:  # a third-party parser on hostile input: any failure is the file's
        raise ToolError(f"{name} could not be read as {suffix[1:]}: {type(exc).__name__}: "
                        f"{str(exc)[:200]}") from exc


def pdf_pages(data: bytes, name: str) -> int:
    """How many pages a PDF has; ToolError when it is broken or encrypted (the Messages API
    refuses both: "Standard PDF (no passwords/encryption)")."""
    try:
        from pypdf import PdfReader

        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted:
            raise ToolError(f"{name} is an encrypted PDF; ask the owner for an unprotected copy")
        return len(reader.pages)
    except ToolError:
        raise
    except Exception as exc:  # a third-party parser on hostile input: any failure is the file's
        raise ToolError(f"{name} could not be read as pdf: {type(exc).__name__}: "
                        f"{str(exc)[:200]}") from exc


def _pdf_text(data: bytes) -> str:
    from pypdf import PdfReader  # imported when a PDF arrives: it is not small

    reader = PdfReader(io.BytesIO(data))
    if reader.is_encrypted:
        raise ToolError("the PDF is encrypted; ask the owner for an unprotected copy")
    pages = []
    for number, page in enumerate(reader.pages[:MAX_PDF_PAGES], start=1):
        pages.append(f"--- page {number} ---\n{page.extract_text() or ''}".rstrip())
    if len(reader.pages) > MAX_PDF_PAGES:
        pages.append(f"[... {len(reader.pages) - MAX_PDF_PAGES} more pages not read]")
    return "\n".join(pages)


def _docx_text(data: bytes) -> str:
    _check_zip(data)
    import docx

    document = docx.Document(io.BytesIO(data))
    lines = [p.text for p in document.paragraphs]
    for number, table in enumerate(document.tables, start=1):
        lines.append(f"--- table {number} ---")
        lines += ["\t".join(cell.text for cell in row.cells) for row in table.rows]
    return "\n".join(lines)


def _xlsx_text(data: bytes) -> str:
    _check_zip(data)
    import openpyxl

    book = openpyxl.load_workbook(io.BytesIO(data), read_only=True, data_only=True)
    try:
        return "\n".join(line for sheet in book.worksheets for line in _sheet_lines(sheet))
    finally:
        book.close()


def _sheet_lines(sheet: Any) -> Iterator[str]:
    yield f"--- sheet {sheet.title} ---"
    rows = sheet.iter_rows(values_only=True)
    for count, row in enumerate(rows):
        if count >= MAX_SHEET_ROWS:
            yield f"[... rows after {MAX_SHEET_ROWS} not read]"
            return
        yield "\t".join("" if value is None else str(value) for value in row)


def _check_zip(data: bytes) -> None:
    """Refuse an office file that would unpack to too much (a zip bomb) before parsing it."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            unpacked = sum(info.file_size for info in archive.infolist())
    except zipfile.BadZipFile as exc:
        raise ToolError(f"not a valid office file (bad zip: {exc})") from exc
    if unpacked > MAX_UNPACKED_BYTES or unpacked > MAX_RATIO * max(len(data), 1):
        raise ToolError(f"the file would unpack to {unpacked} bytes from {len(data)}; "
                        "that is over the limit for documents, so it was not opened")
