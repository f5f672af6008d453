"""Files only the server's own user may read: the data folder (0700) and what it holds (0600).

The database, its WAL and shared-memory files, backups, outbox mails (live verification and reset
tokens) and the generated key are created with these modes whatever the umask; SQLite gives a
database's ``-wal``, ``-shm`` and ``-journal`` files the mode of the database file itself. Files
an operator made wider are left as they are, and ``too_open`` names them for a start-up warning.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterable
from pathlib import Path

FOLDER_MODE = 0o700
FILE_MODE = 0o600


def private_folder(path: Path) -> Path:
    """``path`` as a folder, made 0700 when this call creates it (parents too)."""
    if path.is_dir():
        return path
    missing: list[Path] = []
    at = path
    while not at.exists():
        missing.append(at)
        if at.parent == at:
            break
        at = at.parent
    path.mkdir(parents=True, exist_ok=True)
    for made in missing:
        # Another process may have made it meanwhile; its mode is then its own business.
        with contextlib.suppress(OSError):
            os.chmod(made, FOLDER_MODE)
    return path


def private_file(path: Path) -> Path:
    """Create ``path`` empty with mode 0600 unless it exists (in a private folder)."""
    private_folder(path.parent)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    except FileExistsError:
        return path
    try:
        os.fchmod(fd, FILE_MODE)  # the umask cannot narrow what O_CREAT asked for by accident
    finally:
        os.close(fd)
    return path


def write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to a new file ``path`` with mode 0600."""
    private_folder(path.parent)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)
        with os.fdopen(fd, "wb", closefd=False) as fh:
            fh.write(data)
    finally:
        os.close(fd)


def too_open(paths: Iterable[Path]) -> list[tuple[Path, str]]:
    """Each existing path that others than its owner may read, with its mode (``0o755``): a
    folder is private at 0700, a file at 0600."""
    found = []
    for path in paths:
        try:
            mode = stat.S_IMODE(path.stat().st_mode)
        except OSError:
            continue
        if mode & 0o077:
            found.append((path, oct(mode)))
    return found
