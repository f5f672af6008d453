"""A knowledge document's text, page by page, and its passages: cut on paragraph and word
boundaries, each overlapping the one before so that a sentence cut in two is whole in one.

Text comes from well-kept libraries: ``pypdf`` for PDF, ``python-docx`` for Word, ``selectolax``
for HTML; Markdown and plain text are read as they are.
"""

from __future__ import annotations

import io
import re
import zipfile

from loacl.domain.errors import LoaclError
from loacl.domain.knowledge import KINDS, Passage

CONTENT_TYPES = {
    "pdf": "application/pdf",
    "docx": "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    "md": "text/markdown; charset=utf-8",
    "html": "text/html; charset=utf-8",
    "txt": "text/plain; charset=utf-8",
}
_EXTENSIONS = {"pdf": "pdf", "docx": "docx", "md": "md", "markdown": "md", "html": "html",
               "htm": "html", "txt": "txt", "text": "txt"}
# Names the way passages are cut, kept in each indexed event.
CHUNKER = "paragraphs-v1"
_SPACES = re.compile(r"[ \t\f\v\r]+")
_BLANK = re.compile(r"\n\s*\n+")


class ExtractionError(Exception):
    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


def kind_of(filename: str, data: bytes) -> str:
    """The document's kind, when its name and content agree on one LOACL reads."""
    if not data:
        raise LoaclError("empty_file", "the file is empty")
    extension = filename.rsplit(".", 1)[-1].lower() if "." in filename else ""
    kind = _EXTENSIONS.get(extension)
    accepted = ", ".join(f".{k}" for k in KINDS)
    if kind is None:
        raise LoaclError(
            "unsupported_document_type",
            f"{filename!r}: knowledge takes {accepted} files",
            errors=[{"field": "file", "message": "not an accepted document",
                     "accepted": list(KINDS)}],
        )
    if kind == "docx":
        fits = data.startswith(b"PK\x03\x04")
    elif kind == "pdf":
        # A damaged PDF is still taken: reading it fails in the background, and says why.
        fits = data.lstrip()[:5] == b"%PDF-"
    else:
        fits = b"\x00" not in data[:8192]
    if not fits:
        raise LoaclError(
            "unsupported_document_type",
            f"{filename!r}: the content is not a {kind} file",
            errors=[{"field": "file", "message": "the content does not match the name"}],
        )
    return kind


def _text(data: bytes) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ExtractionError("unreadable_document", "the text is not UTF-8") from None


def _pdf(data: bytes) -> list[str]:
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted:
            raise ExtractionError("unreadable_document", "the PDF is encrypted")
        return [page.extract_text() or "" for page in reader.pages]
    except ExtractionError:
        raise
    except (PdfReadError, ValueError, KeyError, TypeError, AttributeError, OSError) as exc:
        raise ExtractionError("unreadable_document", f"the PDF cannot be read: {exc}") from None


def _docx(data: bytes) -> list[str]:
    import docx
    from docx.opc.exceptions import PackageNotFoundError

    try:
        document = docx.Document(io.BytesIO(data))
    except (PackageNotFoundError, zipfile.BadZipFile, KeyError, ValueError) as exc:
        raise ExtractionError(
            "unreadable_document", f"the Word document cannot be read: {exc}"
        ) from None
    parts = [p.text for p in document.paragraphs]
    for table in document.tables:
        for row in table.rows:
            parts.append(" | ".join(cell.text for cell in row.cells))
    return ["\n\n".join(parts)]


def _html(data: bytes) -> list[str]:
    from selectolax.lexbor import LexborHTMLParser

    tree = LexborHTMLParser(_text(data))
    for node in tree.css("script, style, noscript, template"):
        node.decompose()
    root = tree.body or tree.root
    return [root.text(separator="\n") if root is not None else ""]


def pages_of(kind: str, data: bytes) -> list[str]:
    """The document's text, one string per page (one page for kinds without pages)."""
    if kind == "pdf":
        return _pdf(data)
    if kind == "docx":
        return _docx(data)
    if kind == "html":
        return _html(data)
    return [_text(data)]


def _paragraphs(text: str) -> list[str]:
    text = _SPACES.sub(" ", text)
    out = []
    for block in _BLANK.split(text):
        block = " ".join(line.strip() for line in block.split("\n") if line.strip())
        if block:
            out.append(block)
    return out


def _pieces(paragraph: str, size: int) -> list[str]:
    """A paragraph longer than a passage, cut between words."""
    if len(paragraph) <= size:
        return [paragraph]
    pieces, current = [], ""
    for word in paragraph.split(" "):
        if current and len(current) + 1 + len(word) > size:
            pieces.append(current)
            current = word
        else:
            current = f"{current} {word}" if current else word
    if current:
        pieces.append(current)
    return [p[:size] for p in pieces]


def _tail(text: str, overlap: int) -> str:
    if overlap <= 0 or len(text) <= overlap:
        return text if overlap > 0 else ""
    cut = text[-overlap:]
    space = cut.find(" ")
    return cut[space + 1:] if 0 <= space < len(cut) - 1 else cut


def passages(pages: list[str], size: int, overlap: int) -> list[Passage]:
    """The pages' text in passages of at most about ``size`` characters, each starting with
    the last ``overlap`` characters of the one before on the same page."""
    units = [(n, piece) for n, page in enumerate(pages, 1)
             for paragraph in _paragraphs(page) for piece in _pieces(paragraph, size)]
    out: list[Passage] = []
    current, page, fresh = "", 1, False
    for number, unit in units:
        if current and number != page:
            # A passage stays on its page, so that a citation names the right one.
            if fresh:
                out.append(Passage(text=current, page=page))
            current, fresh = "", False
        if current and fresh and len(current) + 2 + len(unit) > size:
            out.append(Passage(text=current, page=page))
            current, page, fresh = _tail(current, overlap), number, False
        if not current:
            page = number
        current = f"{current}\n\n{unit}" if current else unit
        fresh = True
    if current and fresh:
        out.append(Passage(text=current, page=page))
    return out


def extract(kind: str, data: bytes, size: int, overlap: int) -> tuple[int, list[Passage]]:
    """The document's page count and passages; ``ExtractionError`` says why it cannot be read
    (a document with no text at all is one: a scanned PDF needs text recognition first)."""
    pages = pages_of(kind, data)
    found = passages(pages, size, overlap)
    if not found:
        raise ExtractionError(
            "no_text", "no text was found in the document (a scanned PDF holds only images)"
        )
    return len(pages), found
