"""Regenerate the README's configuration table from loacl/settings.py."""

from __future__ import annotations

import re
from pathlib import Path

from loacl.settings import settings_table

README = Path(__file__).resolve().parent.parent / "README.md"
PATTERN = re.compile(r"(<!-- settings-table:start -->\n).*?(<!-- settings-table:end -->)", re.S)


def render(text: str) -> str:
    return PATTERN.sub(lambda m: m[1] + settings_table() + "\n" + m[2], text)


if __name__ == "__main__":
    README.write_text(render(README.read_text()))
