"""The widget's pure modules (markdown, the message store's offsets, strings, file checks) under
Node.js's own test runner: widget/test/*.test.js import widget/src/ directly, with no DOM and no
npm packages. Without Node.js these tests skip locally and fail under CI (``CI=true``)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

WIDGET = Path(__file__).resolve().parent.parent / "widget"


def _node() -> str:
    node = shutil.which("node")
    if node is None:
        if os.environ.get("CI") == "true":
            pytest.fail("the widget's module tests need Node.js (node) on PATH")
        pytest.skip("the widget's module tests need Node.js (node) on PATH")
    return node


def test_the_pure_modules_pass_their_node_tests() -> None:
    run = subprocess.run(
        [_node(), "--test", "--test-reporter=tap", "test/"],
        cwd=WIDGET, capture_output=True, text=True, timeout=120, check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    passed = re.search(r"^# pass (\d+)$", run.stdout, re.MULTILINE)
    assert passed and int(passed.group(1)) >= 10, run.stdout

