"""``loacl backup`` of a log in PostgreSQL: PostgreSQL's own ``pg_dump``, in its custom format
(``pg_restore`` reads it back, all or table by table), after the log's chain is audited.

The dump is one consistent snapshot of the database (``pg_dump`` reads in one repeatable-read
transaction), so it holds a beginning of the log with its head, the data keys (sealed with the
master key, as in the database) and the checkpoints, whatever instances append meanwhile."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
from pathlib import Path
from urllib.parse import unquote, urlsplit, urlunsplit

from loacl.domain.errors import LoaclError
from loacl.private import private_file


def pg_dump() -> str:
    """``pg_dump`` on PATH, else the newest of Debian's versioned folders (a newer pg_dump
    dumps an older server; an older one refuses a newer server)."""
    found = shutil.which("pg_dump")
    if found:
        return found
    versions = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/pg_dump"),
        key=lambda p: int(Path(p).parent.parent.name) if Path(p).parent.parent.name.isdigit()
        else 0,
    )
    if versions:
        return versions[-1]
    raise LoaclError(
        "backup_unavailable", "pg_dump is not installed: install PostgreSQL's client tools "
        "(Debian's postgresql-client) to back up a log in PostgreSQL",
    )


def _without_password(url: str) -> tuple[str, dict[str, str]]:
    """The URL without its password, and the password as libpq's PGPASSWORD: a command line
    is readable by every user of the machine (``ps``), a process's environment is not."""
    parts = urlsplit(url)
    if parts.password is None:
        return url, {}
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{parts.username or ''}@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc)), {"PGPASSWORD": unquote(parts.password)}


def dump(url: str, dest: Path) -> None:
    """Write the database at ``url`` to ``dest`` (mode 0600), whole or not at all."""
    program = pg_dump()
    partial = dest.with_name(dest.name + ".partial")
    partial.unlink(missing_ok=True)
    private_file(partial)  # the dump holds everything the database does
    address, secret = _without_password(url)
    try:
        done = subprocess.run(
            [program, "--format=custom", "--no-owner", "--file", str(partial),
             "--dbname", address],
            env={**os.environ, **secret}, capture_output=True, text=True, check=False,
        )
    except OSError as exc:
        partial.unlink(missing_ok=True)
        raise LoaclError("backup_unavailable", f"pg_dump could not run: {exc}") from exc
    if done.returncode != 0:
        partial.unlink(missing_ok=True)
        raise LoaclError(
            "backup_unavailable", f"pg_dump failed ({done.returncode}): {done.stderr.strip()}"
        )
    os.chmod(partial, 0o600)
    partial.replace(dest)
