"""The README's owner walk-through, run as written: its shell blocks, one after another in one
bash, against a live server, with the command line on the same database."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from loacl.http.app import create_app
from loacl.settings import ENV_NAMES, Settings
from tests.live import serve

README = Path(__file__).resolve().parents[1] / "README.md"
WAIT = 120.0  # seconds: a bound on the whole walk, not a measurement

# Locally a machine without curl skips; CI installs it (.ci/run) and must run the walk.
pytestmark = pytest.mark.skipif(
    os.environ.get("CI") != "true"
    and (shutil.which("bash") is None or shutil.which("curl") is None),
    reason="needs bash and curl",
)


def walkthrough() -> str:
    text = README.read_text()
    section = text.split("<!-- walkthrough:start -->", 1)[1].split("<!-- walkthrough:end -->")[0]
    blocks = re.findall(r"```sh\n(.*?)```", section, re.S)
    assert len(blocks) >= 6, blocks
    return "\n".join(blocks)


def test_the_readme_walkthrough_runs_as_written(settings: Settings, tmp_path: Path) -> None:
    folder = tmp_path / "shop"
    (folder / ".venv" / "bin").mkdir(parents=True)
    # The quick start's installed command, here the package under test.
    loacl = folder / ".venv" / "bin" / "loacl"
    loacl.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m loacl "$@"\n')
    loacl.chmod(0o755)
    env = {k: v for k, v in os.environ.items()
           if k not in ENV_NAMES.values() and not k.startswith(("LOACL_", "OPENAI_"))}
    env.update({
        "DATABASE_URL": settings.database_url, "LOACL_DATA_DIR": str(settings.data_dir),
        "LOACL_ARGON2_TIME_COST": "1", "LOACL_ARGON2_MEMORY_KIB": "64",
        "LOACL_ARGON2_PARALLELISM": "1", "PYTHONPATH": str(README.parent),
    })
    with serve(create_app(settings)) as url:
        env["LOACL"] = url
        done = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", walkthrough()], cwd=folder, env=env,
            capture_output=True, text=True, timeout=WAIT, check=False,
        )
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    out = done.stdout
    assert "created owner@example.org" in out
    assert "window.LOACL_WIDGET" in out and f"{url}/widget.js" in out
    assert "Do you ship to Norway?" in out  # the demo's answer quotes the message
    assert "Answer in one sentence." in out
    assert '"message_count":2' in out  # the visitor's message and its answer
