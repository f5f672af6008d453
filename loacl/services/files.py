"""Visitor uploads: the type decided from the content and the name together, the bytes stored
content-addressed in SQLite, the metadata as an event."""

from __future__ import annotations

import hashlib
import io
import zipfile

from loacl.domain.conversations import FileUploaded
from loacl.domain.errors import LoaclError
from loacl.domain.events import Metadata
from loacl.domain.widgets import VisitorAccess, conversation_stream
from loacl.services.limits import VisitorLimits
from loacl.services.tokens import new_id
from loacl.settings import Settings
from loacl.store.eventstore import EventStore
from loacl.store.views import files as views
from loacl.store.views.files import FileView

CONTENT_TYPES = {
    "pdf": "application/pdf",
    "docx": "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    "doc": "application/msword",
    "txt": "text/plain; charset=utf-8",
}
OLE2 = bytes.fromhex("d0cf11e0a1b11ae1")


def sniff(data: bytes) -> str | None:
    """The kind of document these bytes are, from their content alone."""
    if data.startswith(b"%PDF-"):
        return "pdf"
    if data.startswith(OLE2):
        return "doc"
    if data.startswith(b"PK\x03\x04"):
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as archive:
                return "docx" if "word/document.xml" in archive.namelist() else None
        except zipfile.BadZipFile:
            return None
    if b"\x00" in data:
        return None
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return "txt"


def check_upload(filename: str, data: bytes, allowed: list[str]) -> str:
    """The file's kind when its name and content agree and the kind is allowed."""
    if not data:
        raise LoaclError("empty_file", "the file is empty")
    extension = filename.rsplit(".", 1)[-1].lower() if "." in filename else ""
    kind = sniff(data)
    if kind is None or extension != kind or kind not in allowed:
        allowed_list = ", ".join(sorted(allowed))
        raise LoaclError(
            "unsupported_file_type",
            f"{filename!r} is not an accepted file; accepted types: {allowed_list}, "
            "with a name that matches the content",
        )
    return kind


def clean_filename(name: str) -> str:
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(c for c in name if c.isprintable() and c not in '"<>|:*?').strip(" .")
    return name[:200] or "file"


class Files:
    def __init__(
        self, store: EventStore, settings: Settings, limits: VisitorLimits | None = None
    ) -> None:
        self.store = store
        self.settings = settings
        self.limits = limits or VisitorLimits(settings)

    async def upload(
        self, access: VisitorAccess, filename: str, data: bytes, meta: Metadata
    ) -> FileView:
        filename = clean_filename(filename)
        kind = check_upload(filename, data, list(self.settings.allowed_file_types))
        # Counted once it would be kept: uploads stay in the database for good.
        self.limits.upload(access.visitor_id, meta.client_ip, len(data))
        digest = hashlib.sha256(data).hexdigest()
        await views.keep_blob(self.store, digest, data)
        file_id = new_id()
        try:
            await self.store.append(
                conversation_stream(access.conversation_id),
                [FileUploaded(
                    file_id=file_id, conversation_id=access.conversation_id,
                    widget_id=access.widget_id, visitor_id=access.visitor_id,
                    filename=filename, kind=kind, content_type=CONTENT_TYPES[kind],
                    size=len(data), sha256=digest,
                )],
                metadata=meta,
            )
        except LoaclError as exc:
            if exc.code == "subject_erased":
                # Erased while the bytes were being kept: they must not stay behind.
                await views.drop_unnamed_blob(self.store, digest)
            raise
        found = await views.file(self.store, file_id)
        assert found is not None  # the projection wrote it in the append's transaction
        return found

    async def fetch(
        self, widget_id: str, file_id: str, *, visitor_id: str | None
    ) -> tuple[FileView, bytes]:
        """The file and its bytes, for the visitor who uploaded it (``visitor_id``) or the
        widget's owner (None)."""
        found = await views.file(self.store, file_id)
        if found is None or found.widget_id != widget_id or (
            visitor_id is not None and found.visitor_id != visitor_id
        ):
            raise LoaclError("not_found", "no such file")
        data = await views.blob(self.store, found.sha256)
        if data is None:
            raise LoaclError("not_found", "the file's content is missing")
        return found, data
