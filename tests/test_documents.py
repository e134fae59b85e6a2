"""read_file on documents: the text of .pdf, .docx and .xlsx attachments; bombs and broken files
are refused with a reason."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import docx
import openpyxl
import pytest
from fpdf import FPDF

from mailagent.policy import Policy, Scope, decide, decide_move
from mailagent.tools.files import FileTools, ToolError


@pytest.fixture
def files(tmp_path: Path) -> FileTools:
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    scope = Scope(workspace=workspace, home=tmp_path, protected=())
    return FileTools(
        workspace=workspace,
        judge=lambda action, path: decide(Policy(), action, path, scope),  # type: ignore[arg-type]
        judge_move=lambda src, dst: decide_move(Policy(), src, dst, scope),
        trash=tmp_path / "trash", on_attach=lambda _path: None)


def test_read_file_gives_the_text_of_a_pdf_when_lines_are_asked_for(files: FileTools) -> None:
    # Without offset or limit a PDF is shown whole, as a document block (tests/test_media.py).
    pdf = FPDF()
    for words in ("Quarterly report", "Revenue rose by 12 percent"):
        pdf.add_page()
        pdf.set_font("helvetica", size=14)
        pdf.cell(text=words)
    (files.workspace / "report.pdf").write_bytes(bytes(pdf.output()))
    text = files.read_file("report.pdf", offset=1)
    assert isinstance(text, str)
    assert "--- page 1 ---" in text and "Quarterly report" in text
    assert "--- page 2 ---" in text and "Revenue rose by 12 percent" in text


def test_read_file_gives_the_text_and_tables_of_a_docx(files: FileTools) -> None:
    document = docx.Document()
    document.add_paragraph("Minutes of the garden club")
    table = document.add_table(rows=1, cols=2)
    table.rows[0].cells[0].text, table.rows[0].cells[1].text = "tomatoes", "bed 3"
    document.save(str(files.workspace / "minutes.docx"))
    text = files.read_file("minutes.docx")
    assert "Minutes of the garden club" in text and "tomatoes\tbed 3" in text


def test_read_file_gives_the_cells_of_every_sheet_of_an_xlsx(files: FileTools) -> None:
    book = openpyxl.Workbook()
    book.active.title = "Q1"
    book.active.append(["month", "sales"])
    book.active.append(["Jan", 120])
    book.create_sheet("Q2").append(["Apr", 99.5])
    book.save(files.workspace / "sales.xlsx")
    text = files.read_file("sales.xlsx", offset=1)
    assert text.splitlines()[1:3] == ["     2  month\tsales", "     3  Jan\t120"]
    assert "--- sheet Q2 ---" in text and "Apr\t99.5" in text


def test_a_zip_bomb_dressed_as_a_docx_is_not_opened(files: FileTools) -> None:
    packed = io.BytesIO()
    with zipfile.ZipFile(packed, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("word/document.xml", b"\0" * (200 * 1024 * 1024))
    (files.workspace / "bomb.docx").write_bytes(packed.getvalue())
    with pytest.raises(ToolError, match="would unpack to 209715200 bytes"):
        files.read_file("bomb.docx")


@pytest.mark.parametrize("name", ["broken.pdf", "broken.docx", "broken.xlsx"])
def test_a_broken_document_is_refused_with_a_reason(files: FileTools, name: str) -> None:
    (files.workspace / name).write_bytes(b"%PDF-1.4 this is not really a document\n" * 3)
    with pytest.raises(ToolError, match=f"{name}|not a valid office file"):
        files.read_file(name)


def test_other_binary_files_are_still_refused(files: FileTools) -> None:
    (files.workspace / "blob.bin").write_bytes(b"\0\1\2" * 100)
    with pytest.raises(ToolError, match="binary file of 300 bytes"):
        files.read_file("blob.bin")
