"""structlog set-up: JSON lines or readable text, with the request id bound per request."""

from __future__ import annotations

import logging
import sys

import structlog


def readable(fmt: str) -> bool:
    """Whether ``fmt`` (the ``log_format`` setting) asks for text rather than JSON lines:
    ``auto`` gives text to a person at a terminal and JSON to whatever collects the log."""
    if fmt == "auto":
        return sys.stderr.isatty()
    return fmt in ("text", "console")


def configure_logging(level: str = "info", fmt: str = "auto") -> None:
    renderer: structlog.types.Processor = (
        structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
        if readable(fmt)
        else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=False,
    )
