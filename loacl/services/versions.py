"""Optimistic concurrency as HTTP clients see it: a change names the version it was read at."""

from __future__ import annotations

from loacl.domain.errors import LoaclError


def expect_version(what: str, version: int, if_match: int | None) -> None:
    """Refuse a change made from an older read (``If-Match``) than the stream's version."""
    if if_match is not None and if_match != version:
        raise LoaclError(
            "version_conflict", f"the {what} changed since you read it; GET it again",
            current_version=version,
        )
