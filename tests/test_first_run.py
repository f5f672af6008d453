"""What a newcomer sees when ``loacl serve`` starts and stops: where it listens and what to do
next, readable at a terminal and JSON lines when the output is collected."""

from __future__ import annotations

import contextlib
import email
import json
import os
import pty
import select
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from email import policy
from email.message import EmailMessage
from pathlib import Path

import httpx
import pytest

from loacl.settings import ENV_NAMES
from loacl.store.sqlite import WAL_RESET_FIXED
from tests.test_crash import free_port

WAIT = 30.0


def _env(folder: Path, **extra: str) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items()
        if k not in ENV_NAMES.values() and not k.startswith("LOACL_")
    }
    env.update({
        "DATABASE_URL": f"sqlite:///{folder / 'loacl.db'}",
        "LOACL_DATA_DIR": str(folder / "data"),
        "LOACL_ARGON2_MEMORY_KIB": "64",
        **extra,
    })
    return env


class Started:
    def __init__(self, proc: subprocess.Popen[bytes], read: int, port: int) -> None:
        self.proc, self.read, self.port, self.text = proc, read, port, ""

    def wait_for(self, needle: str) -> str:
        deadline = time.monotonic() + WAIT
        while needle not in self.text:
            assert time.monotonic() < deadline, f"no {needle!r} in:\n{self.text}"
            ready, _, _ = select.select([self.read], [], [], 0.1)
            if ready:
                with contextlib.suppress(OSError):  # EIO: a pty whose child has gone
                    chunk = os.read(self.read, 65536)
                    self.text += chunk.decode(errors="replace")
        return self.text

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=WAIT)
        self.wait_for("loacl.stopped")
        return code


@contextlib.contextmanager
def serve(folder: Path, *, terminal: bool, **env: str) -> Iterator[Started]:
    """``python -m loacl serve`` with its output on a pseudo-terminal or a pipe."""
    port = free_port()
    if terminal:
        read, write = pty.openpty()
    else:
        read, write = os.pipe()
    proc = subprocess.Popen(
        [sys.executable, "-m", "loacl", "serve", "--port", str(port)],
        cwd=folder, env=_env(folder, **env), stdout=write, stderr=write, stdin=subprocess.DEVNULL,
    )
    os.close(write)
    started = Started(proc, read, port)
    try:
        yield started
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=WAIT)
        os.close(read)


def test_collected_output_is_json_lines_naming_the_url_and_the_next_step(
    tmp_path: Path,
) -> None:
    with serve(tmp_path, terminal=False) as server:
        server.wait_for("loacl.listening")
        assert server.stop() == 0
    lines = [json.loads(line) for line in server.text.splitlines() if line.strip()]
    events = {line["event"]: line for line in lines}
    port = server.port
    listening = events["loacl.listening"]
    assert listening["url"] == f"http://127.0.0.1:{port}/"
    assert listening["api_docs"] == f"http://127.0.0.1:{port}/docs"
    assert listening["console"] == f"http://127.0.0.1:{port}/console/"
    assert f"open http://127.0.0.1:{port}/console/" in listening["next"]
    assert "loacl users create" in listening["next"]
    assert "loacl.stopped" in events
    warnings = [line for line in lines if line["event"] == "sqlite.wal_reset_bug"]
    if sqlite3.sqlite_version_info < WAL_RESET_FIXED:
        assert len(warnings) == 1  # once, saying what it means and what to do
        assert "corrupt" in warnings[0]["meaning"]
        assert warnings[0]["what_to_do"]
    else:
        assert warnings == []


def test_a_terminal_gets_readable_lines(tmp_path: Path) -> None:
    with serve(tmp_path, terminal=True) as server:
        text = server.wait_for("loacl.listening")
        assert server.stop() == 0
    line = next(ln for ln in text.splitlines() if "loacl.listening" in ln)
    assert not line.lstrip().startswith("{")
    assert f"http://127.0.0.1:{server.port}/" in line


def test_the_public_url_is_the_one_shown(tmp_path: Path) -> None:
    with serve(tmp_path, terminal=False, LOACL_PUBLIC_URL="https://chat.example.org",
               LOACL_LOG_FORMAT="json") as server:
        server.wait_for("loacl.listening")
        server.stop()
    listening = next(
        json.loads(ln) for ln in server.text.splitlines() if "loacl.listening" in ln
    )
    assert listening["url"] == "https://chat.example.org/"
    assert listening["listening_on"] == f"http://127.0.0.1:{server.port}/"


def test_mail_links_name_the_port_given_to_serve(tmp_path: Path) -> None:
    """Without ``public_url``, a verification link points where ``loacl serve --port`` listens,
    not at the configured port."""
    with serve(tmp_path, terminal=False) as server:
        server.wait_for("loacl.listening")
        response = httpx.post(
            f"http://127.0.0.1:{server.port}/api/v1/auth/register",
            json={"email": "ada@example.com", "password": "correct horse battery staple"},
            timeout=WAIT,
        )
        assert response.status_code == 202, response.text
        assert server.stop() == 0
    [path] = (tmp_path / "data" / "outbox").glob("*.eml")
    message = email.message_from_bytes(path.read_bytes(), policy=policy.default)
    assert isinstance(message, EmailMessage)
    body = message.get_content()
    assert f"http://127.0.0.1:{server.port}/api/v1/auth/verify-email" in body
    assert server.port != 8000


@pytest.mark.parametrize("value", ["text", "console"])
def test_text_is_the_readable_format_and_console_its_older_name(
    tmp_path: Path, value: str
) -> None:
    with serve(tmp_path, terminal=False, LOACL_LOG_FORMAT=value) as server:
        text = server.wait_for("loacl.listening")
        server.stop()
    assert not any(ln.startswith("{") for ln in text.splitlines())
