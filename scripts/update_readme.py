"""Regenerate the README's generated tables: settings (loacl/settings.py) and error codes
(loacl/http/errors.py)."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from loacl.http.errors import error_table
from loacl.settings import settings_table

README = Path(__file__).resolve().parent.parent / "README.md"
TABLES: dict[str, Callable[[], str]] = {
    "settings-table": settings_table,
    "error-codes": error_table,
}


def _fill(text: str, name: str, body: str) -> str:
    pattern = re.compile(rf"(<!-- {name}:start -->\n).*?(<!-- {name}:end -->)", re.S)
    # A function, not a replacement string: a table may hold backslashes.
    return pattern.sub(lambda m: m[1] + body + "\n" + m[2], text)


def render(text: str) -> str:
    for name, table in TABLES.items():
        text = _fill(text, name, table())
    return text


if __name__ == "__main__":
    README.write_text(render(README.read_text()))
