"""structlog set-up: JSON lines or readable text, with the request id bound per request."""

from __future__ import annotations

import logging
import re
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


# A token in a query string (``?token=`` on the stream of an old widget build) as uvicorn's own
# lines would show it: the value is replaced before the line is written anywhere.
_QUERY_TOKEN = re.compile(r"([?&](?:[a-z_]*token)=)[^&\s\"']*", re.IGNORECASE)


class RedactQueryTokens(logging.Filter):
    """Replaces the value of every ``...token=`` query parameter in a record's message."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = _QUERY_TOKEN.sub(r"\1[redacted]", message)
        if redacted != message:
            record.msg, record.args = redacted, None
        return True


def redact_server_logs() -> None:
    """uvicorn's loggers name a WebSocket's path with its query string (``"WebSocket
    /api/v1/widgets/w/stream?token=..." [accepted]``): redact tokens there, once per process."""
    for name in ("uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactQueryTokens) for f in logger.filters):
            logger.addFilter(RedactQueryTokens())
