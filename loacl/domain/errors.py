"""The one error type, ``LoaclError(code, message)``.

Every code raised anywhere in LOACL, with its HTTP status and meaning, is in ``ERRORS`` in
``loacl/http/errors.py`` (and the README's table, generated from it); a test fails when a raised
code is missing there.
"""

from __future__ import annotations

from typing import Any


class LoaclError(Exception):
    """The one error type. ``code`` is stable and documented; HTTP maps it to a status."""

    def __init__(self, code: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.extra = extra

    def __repr__(self) -> str:
        return f"LoaclError({self.code!r}, {self.message!r})"


class ConflictError(LoaclError):
    """The stream moved on since the caller read it."""

    def __init__(self, stream: str, expected: int, actual: int) -> None:
        super().__init__(
            "version_conflict",
            f"stream {stream} is at version {actual}, not {expected}",
            stream=stream,
            expected_version=expected,
            actual_version=actual,
        )
        self.stream = stream
        self.expected = expected
        self.actual = actual
